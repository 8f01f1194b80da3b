"""`reverie eval` over long horizons: time buckets, the real game beside the dream past the recording, object probes,
control, the Fréchet distance, IDM per bucket and the side-by-side video; with the tiny random 32x32 model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_main import cli

from train.evaluation.frechet import FrechetReference
from train.evaluation.long_play import Track, bucket_edges, evenly_spaced, plan_starts
from train.pictures.video import side_by_side, video_frames, video_stride

DIRECTIONS = ("up", "down", "left", "right")
EDGES_1000 = [(1, 16), (17, 100), (101, 250), (251, 500), (501, 1000)]


def no_nan(text: str) -> dict:
    """JSON that holds no NaN or Infinity (json.loads would read them silently)."""
    def refuse(name):
        raise AssertionError(f"{name} in the eval JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """The tiny random model (32x32, builtin:gems) and two recorded builtin:gems episodes of 60 steps at 32x32."""
    from tiny_model import tiny_checkpoint

    root = tmp_path_factory.mktemp("long")
    data = root / "data"
    assert cli("record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "2", "--steps", "60", "--size",
               "32", "--out", data, "--seed", "3", "--no-progress") == 0
    return SimpleNamespace(root=root, data=data, model=tiny_checkpoint(root / "tiny.safetensors"))


def eval_args(t: SimpleNamespace, out: Path, *extra) -> list:
    return ["eval", "--model", t.model, "--data", t.data, "--json", out, "--threads", "1", "--idm-steps", "2",
            "--rollouts-per-episode", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def long_run(tiny) -> SimpleNamespace:
    """A 1000-frame eval of 2 rollouts (about 20 s on a busy 2-core CPU)."""
    out = tiny.root / "long" / "e.json"
    assert cli(*eval_args(tiny, out, "--horizon", "1000")) == 0
    return SimpleNamespace(json=out, r=no_nan(out.read_text()))


def is_share(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# The 1000-frame eval
# ---------------------------------------------------------------------------------------------------------------
def test_long_eval_reports_every_metric_per_bucket(long_run):
    r = long_run.r
    assert r["horizon"] == 1000 and r["rollouts"] == 2 and r["frames"] == 2000
    buckets = r["horizon_buckets"]
    assert [(b["first"], b["last"]) for b in buckets] == EDGES_1000
    for b in buckets:
        assert b["frames"] == 2 * (b["last"] - b["first"] + 1) and 0 < b["real_frames"] <= b["frames"]
        for key in ("psnr", "ssim", "fd", "fd_floor", "idm_accuracy_dream", "idm_accuracy_real"):
            assert isinstance(b[key], float) and math.isfinite(b[key]), (key, b)
        assert 0 < b["psnr"] <= 100 and -1 <= b["ssim"] <= 1 and b["fd"] >= 0 and b["fd_floor"] >= 0
        assert is_share(b["idm_accuracy_dream"]) and is_share(b["idm_accuracy_real"])
        assert set(b["objects"]) == set(r["objects"])
    # the recording (61 frames, 2 of context) gives the actions of the first 59 frames; an agent plays the rest
    assert buckets[0]["recorded_actions"] == 1.0 and buckets[-1]["recorded_actions"] == 0.0
    assert r["recorded_actions"] == pytest.approx(59 / 1000)
    # builtin:gems is replayed from each episode's seed: real frames far past the end of the recording
    assert r["real_reference"] == {"replayed_rollouts": 2, "not_replayed_because": None}
    assert sum(b["real_frames"] for b in buckets) == r["real_frames"] > 2 * 61
    assert len(r["psnr"]) == len(r["ssim"]) == 1000
    af = r["action_following"]
    assert is_share(af["idm_real_accuracy"]) and is_share(af["chance"]) and af["idm_real_accuracy"] == af["real"]
    assert len(af["generated_by_step"]) == len(af["real_by_step"]) == 1000
    # the real game ran alongside the whole horizon, so every step is also scored by what the read action does; a
    # read action that is right by keys is right by effect, so the score by effect is never below the one by keys
    assert af["by_effect_steps"] > 0.9 and is_share(af["real_by_effect"]) and is_share(af["generated_by_effect"])
    assert af["real_by_effect"] >= af["real"] and af["generated_by_effect"] >= af["generated"]
    for b in buckets:
        assert is_share(b["idm_accuracy_dream_by_effect"]) and is_share(b["idm_accuracy_real_by_effect"])
        assert b["idm_accuracy_dream_by_effect"] >= b["idm_accuracy_dream"]
    assert isinstance(r["fd_floor"], float) and r["fd_floor"] >= 0


def test_long_eval_reports_objects_and_control(long_run):
    r, n_buckets = long_run.r, len(EDGES_1000)
    objects = r["objects"]
    assert set(objects) == {"avatar", "gems", "enemies", "score"}
    for o in objects.values():
        assert is_share(o["visible_real"]) and is_share(o["visible_dream_all"])
        assert len(o["visible_dream"]) == len(o["visible_real_buckets"]) == n_buckets
        assert all(is_share(v) for v in o["visible_dream"] + o["visible_real_buckets"])
        assert o["ratio"] is None or o["ratio"] >= 0
        assert len(o["area_real"]) == len(o["area_dream"]) == n_buckets
        assert all(v is None or v >= 0 for v in o["area_real"] + o["area_dream"])
        assert o["area_ratio"] is None or o["area_ratio"] >= 0
        assert len(o["count_real"]) == len(o["count_dream"]) == n_buckets
        assert all(v is None or v >= 0 for v in o["count_real"] + o["count_dream"])
        assert is_share(o["more_than_real"]) and (o["count_ratio"] is None or o["count_ratio"] >= 0)
        assert len(o["visible_clean_dream"]) == n_buckets
        assert all(c <= v for c, v in zip(o["visible_clean_dream"], o["visible_dream"]))  # clean is a part of visible
        assert o["clean_ratio"] is None or 0 <= o["clean_ratio"] <= o["ratio"]
    assert objects["avatar"]["visible_real"] > 0.9                      # the real game shows its avatar
    assert all(0.9 <= n <= 1 for n in objects["avatar"]["count_real"])  # one avatar (rarely none while it flashes)
    for b, real_n in zip(r["horizon_buckets"], objects["gems"]["count_real"]):
        assert b["objects"]["gems"]["count_real"] == real_n and 1 <= real_n <= 3   # three gems, some touching
    assert 25 <= objects["avatar"]["area_real"][0] <= 45                # its 6x6 sprite, less what overlaps
    assert is_share(objects["avatar"]["gone_at_end"])
    control = r["control"]
    assert control["frames"] == 12 and control["starts"] == 2
    for d in DIRECTIONS:
        assert {"real_px", "dream_px", "dream_missing", "ratio"} <= set(control[d])
        assert isinstance(control[d]["real_px"], float) and is_share(control[d]["dream_missing"])
    # from the centre of the play area the real avatar moves 12 frames x 2 px (scaled to 64x64) up and down
    assert control["up"]["real_px"] > 0 and control["down"]["real_px"] > 0
    after = r["control_after_dream"]
    assert after["after_frames"] == 1000 and after["rollouts"] == 2 and after["frames"] == 12
    for d in DIRECTIONS:
        assert set(after[d]) == {"dream_px", "dream_missing"} and is_share(after[d]["dream_missing"])


def test_long_eval_writes_the_side_by_side_video_and_plots(long_run):
    from PIL import Image

    gif = long_run.json.with_name("e_dream.gif")
    assert long_run.r["video"] == str(gif) and gif.exists()
    with Image.open(gif) as im:
        assert im.n_frames == video_frames(1000) == 500               # every 2nd frame of 1000
        assert im.size == (2 * 2 * 32 + 2, 12 + 2 * 32)                # real | dream at 2x, a divider, a text strip
    assert gif.stat().st_size < 10 * 2**20
    for png in (long_run.json.with_suffix(".png"), long_run.json.with_name("e_buckets.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in long_run.r["plots"]


def test_real_frames_past_the_recording_are_the_real_game_under_the_dreams_actions(tiny, tmp_path, monkeypatch):
    """The real reference past the recording is the game replayed from the episode's seed under exactly the actions
    the dream got; the dream goes on where the real game ends."""
    from train.data.episodes import Episode
    from train.data.windows import EpisodeSource
    from train.evaluation import evaluate
    from train.games.registry import make_game

    kept = {}
    real_run = evaluate.run_rollouts

    def keep(*a, **kw):
        kept["roll"] = real_run(*a, **kw)
        return kept["roll"]

    monkeypatch.setattr(evaluate, "run_rollouts", keep)
    assert cli(*eval_args(tiny, tmp_path / "e.json", "--horizon", "150")) == 0
    roll, src = kept["roll"], EpisodeSource(tiny.data)
    for r, (e, s) in enumerate(roll.starts):
        with Episode(src.ds.episodes[e].path) as ep:
            seed = ep.header["seed"]
        context = 2
        game = make_game("builtin:gems", size=32, seed=seed)
        game.config.max_steps = 10**9
        frame = game.reset(seed)
        for a in src.actions[e][1:s + context]:
            frame, _ = game.step(a)
        assert np.array_equal(frame, roll.last_context[r])
        for t in range(roll.horizon):
            if not roll.real_ok[r, t]:
                assert not roll.real_ok[r, t:].any()                   # a game over ends the real reference
                break
            frame, done = game.step(roll.actions[r, t])
            assert np.array_equal(frame, roll.real[r, t]), (r, t)
        assert roll.recorded[r, :59].all() and not roll.recorded[r, 59:].any()
        assert np.array_equal(roll.actions[r, :59], src.actions[e][s + context:s + context + 59])


def test_an_episode_without_a_seed_has_real_frames_only_while_its_recording_lasts(tiny, tmp_path):
    """A game that cannot be replayed (here: an episode file with no seed, like imported video): PSNR and the real
    probes are null past the recording; FD and IDM on dream frames are still reported per bucket."""
    from train.data.episodes import Episode, EpisodeWriter
    from train.data.windows import EpisodeSource

    src = EpisodeSource(tiny.data)
    data = tmp_path / "noseed"
    data.mkdir()
    with Episode(src.ds.episodes[0].path) as ep:
        frames, actions = ep.frames(), ep.actions()
        spec, env = ep.spec, ep.env_id
    with EpisodeWriter(data / "x.episode", env_id=env, action_spec=spec, frame_shape=frames.shape[1:]) as w:
        w.append(frames[0])
        for f, a in zip(frames[1:], actions):
            w.append(f, a)
    out = tmp_path / "e.json"
    assert cli(*eval_args(SimpleNamespace(model=tiny.model, data=data), out, "--horizon", "120")) == 0
    r = no_nan(out.read_text())
    assert r["real_reference"]["replayed_rollouts"] == 0 and "seed" in r["real_reference"]["not_replayed_because"]
    b = r["horizon_buckets"]
    assert [(x["first"], x["last"]) for x in b] == [(1, 16), (17, 100), (101, 120)]
    assert b[0]["psnr"] is not None and b[2]["psnr"] is None and b[2]["real_frames"] == 0
    assert b[2]["idm_accuracy_real"] is None and b[2]["objects"]["avatar"]["visible_real"] is None
    assert r["objects"]["avatar"]["visible_real_buckets"][2] is None
    assert all(isinstance(x["fd"], float) and isinstance(x["idm_accuracy_dream"], float) for x in b)
    assert r["psnr"][-1] is None and r["psnr"][0] is not None
    assert all(r["control"][d]["real_px"] is None for d in DIRECTIONS)   # no real game to hold a direction in


@pytest.mark.parametrize("extra,needle", [
    (["--context", "61"], "no episode has 62 frames"),
    (["--horizon", "9000000"], "GB for their frames"),
])
def test_long_eval_bad_requests_give_one_line_errors(tiny, tmp_path, capsys, extra, needle):
    capsys.readouterr()
    assert cli(*eval_args(tiny, tmp_path / "e.json", *extra)) == 1
    err = capsys.readouterr().err
    assert "reverie eval: error:" in err and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e.json").exists()


def test_long_eval_refuses_an_unwritable_json_folder_before_the_run(tiny, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert cli(*eval_args(tiny, blocker / "e.json", "--horizon", "1000")) == 1
    err = capsys.readouterr().err
    assert "--json" in err and str(blocker) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_horizon_zero_is_refused(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(*eval_args(tiny, tmp_path / "e.json", "--horizon", "0"))
    assert e.value.code == 2 and "argument --horizon" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------
def test_bucket_edges():
    assert bucket_edges(1) == [(1, 1)]
    assert bucket_edges(16) == [(1, 16)]
    assert bucket_edges(120) == [(1, 16), (17, 100), (101, 120)]
    assert bucket_edges(1000) == EDGES_1000
    assert bucket_edges(3000) == EDGES_1000 + [(1001, 2000), (2001, 3000)]
    assert bucket_edges(4000) == EDGES_1000 + [(1001, 2000), (2001, 4000)]


def test_plan_starts_keeps_short_windows_and_starts_long_rollouts_at_the_episode_start():
    src = SimpleNamespace(lengths=[41, 41, 5, 20])
    # where the episode holds context + horizon frames: the windows of a short eval; else one from its first frame
    assert plan_starts(src, context=2, horizon=4, per_episode=3, max_episodes=0) == \
        [(0, 0), (0, 17), (0, 34), (1, 0), (1, 17), (1, 34), (2, 0), (3, 0), (3, 7), (3, 14)]
    # an episode of `context` frames or fewer gives none
    assert plan_starts(src, context=5, horizon=100, per_episode=3, max_episodes=0) == [(0, 0), (1, 0), (3, 0)]
    assert plan_starts(src, context=8, horizon=30, per_episode=3, max_episodes=2) == [(0, 0), (1, 0)]


class OverAfter:
    """A stand-in game whose episode ends (game over) after `n` more steps."""

    def __init__(self, n: int):
        self.n, self.closed = n, False

    def step(self, action):
        self.n -= 1
        return np.full((2, 2, 3), 7, np.uint8), self.n <= 0

    def close(self):
        self.closed = True


class Constant:
    def __init__(self, value: float):
        self.value = value

    def act(self, frame):
        return np.full(4, self.value, np.float32)


def test_track_plays_the_recording_then_the_agent_on_the_real_game_then_the_fallback():
    frames = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    actions = np.eye(4, dtype=np.float32)[:3]
    game = OverAfter(3)
    tr = Track(frames, actions, index=2, game=game, agent=Constant(1.0), fallback=Constant(0.0),
               last_real=frames[1])
    dream = np.zeros((2, 2, 3), np.uint8)
    a, recorded = tr.next_action(dream)
    assert recorded and np.array_equal(a, actions[2])
    assert np.array_equal(tr.advance(a), frames[2])                  # the recording wins while it lasts
    a, recorded = tr.next_action(dream)
    assert not recorded and (a == 1.0).all()                         # the agent, on the real game
    assert (tr.advance(a) == 7).all()                                 # the real game's frame
    a, _ = tr.next_action(dream)
    assert (tr.advance(a) == 7).all() and game.closed and tr.game is None   # game over: the last real frame
    a, recorded = tr.next_action(dream)
    assert not recorded and (a == 0.0).all() and tr.advance(a) is None      # the fallback; no real frame


def gems_at(x: int, y: int):
    """A builtin:gems game with its avatar moved to world position (x, y), away from everything else."""
    from train.games.registry import make_game

    game = make_game("builtin:gems", size=64, seed=5)
    game.reset(5)
    state = game.state_dict()
    state["player"], state["enemies"], state["gems"] = [x, y], [], []
    game.load_state_dict(state)
    return game


def button_set(*pressed: str) -> int:
    """The index Track.effects gives the set of pressed buttons (bit i: button i of up, down, left, right)."""
    return sum(1 << DIRECTIONS.index(b) for b in pressed)


def test_track_effects_group_the_button_sets_that_do_the_same_thing():
    from train.games.builtin import WORLD

    def effects(game):
        tr = Track(np.zeros((0, 64, 64, 3), np.uint8), np.zeros((0, 4), np.float32), 0, game, None, None)
        before = game.state_dict()
        eff = tr.effects(np.zeros(4, np.float32))
        assert game.state_dict() == before                     # the real game is left as it was
        return eff

    eff = effects(gems_at(30, 30))                             # in the open
    none, right = eff[button_set()], eff[button_set("right")]
    assert eff.shape == (16,) and right != none and eff[button_set("left")] not in (none, right)
    assert eff[button_set("up", "down")] == none               # opposite buttons cancel
    assert eff[button_set("right", "up", "down")] == right
    assert eff[button_set("up", "right")] not in (none, right, eff[button_set("up")])
    assert len(set(eff.tolist())) == 9                         # 3 x 3 moves

    eff = effects(gems_at(WORLD - 6, 30))                      # against the right wall
    assert eff[button_set("right")] == eff[button_set()]       # pushing into the wall looks like standing still
    assert eff[button_set("up", "right")] == eff[button_set("up")]
    assert len(set(eff.tolist())) == 6

    game = gems_at(30, 30)
    game.done = True
    assert effects(game) is None                               # no next frame to compare
    tr = Track(np.zeros((0, 64, 64, 3), np.uint8), np.zeros((0, 4), np.float32), 0, None, None, None)
    assert tr.effects(np.zeros(4, np.float32)) is None         # no real game


def test_same_effect_scores_a_read_action_by_what_it_does():
    from train.evaluation.idm_judge import same_effect

    eff = torch.zeros(1, 2, 16, dtype=torch.long)
    eff[0, 0] = torch.arange(16)                                  # step 0: every button set does something else
    eff[0, 1, button_set("right")] = 0                            # step 1: "right" does what nothing pressed does
    eff[0, 1, button_set("left")] = 1
    target = torch.zeros(1, 2, 4)                                 # nothing pressed, both steps
    pred = torch.zeros(1, 2, 4)
    pred[0, :, DIRECTIONS.index("right")] = 1.0                   # the judge reads "right" both times
    assert same_effect(eff, pred, target, 4).tolist() == [[False, True]]
    pred[0, :, DIRECTIONS.index("left")] = 1.0                    # "left + right": its own class at step 0, 0 at 1
    pred[0, :, DIRECTIONS.index("right")] = 0.0
    assert same_effect(eff, pred, target, 4).tolist() == [[False, False]]


def test_frechet_distance_of_known_gaussians():
    """FD(N(m1, a I), N(m2, b I)) = |m1 - m2|^2 + D (sqrt(a) - sqrt(b))^2; 0 for one set against itself; finite
    (and larger) for fewer samples than dims. Samples are (frames, samples a frame, dims)."""
    g = torch.Generator().manual_seed(0)
    D = 8
    a = torch.randn(5000, 4, D, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(5000, 4, D, generator=g, dtype=torch.float64) + 0.5   # variance 4, mean 0.5
    ref = FrechetReference(a, a.clone())
    assert ref.floor() == pytest.approx(0.0, abs=1e-6)
    assert ref.distance(b) == pytest.approx(D * 0.25 + D * (2 - 1) ** 2, rel=0.05)
    wide = FrechetReference(torch.randn(300, 1, 64, generator=g, dtype=torch.float64),
                            torch.randn(300, 1, 64, generator=g, dtype=torch.float64))
    few, many = wide.floor(16), wide.floor()
    assert math.isfinite(few) and few > many > 0                       # the small-sample bias the floors match
    assert wide.distance(torch.zeros(1, 1, 64)) is None                # one sample has no covariance
    assert list(evenly_spaced(10, 4)) == [0, 3, 6, 9] and list(evenly_spaced(3, 5)) == [0, 1, 2]


def test_frechet_samples_are_latent_cells(tiny):
    """encode_latents gives every cell of the encoder's grid as one sample: (N, h*w, C)."""
    from engine.checkpoint import load_checkpoint, load_world_model
    from train.evaluation.frechet import encode_latents

    (ae, _), frames = load_world_model(load_checkpoint(tiny.model)), np.zeros((3, 32, 32, 3), np.uint8)
    ae.eval()
    z = encode_latents(ae, frames, "cpu")
    assert z.shape == (3, 4 * 4, 16) and z.dtype == torch.float64
    torch.testing.assert_close(z[1, 5], ae.encode(torch.zeros(1, 3, 32, 32))[0, :, 1, 1].double())


def test_side_by_side_video(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    dream = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    real = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    ok = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    path = side_by_side(tmp_path / "v.gif", real, ok, dream)
    with Image.open(path) as im:
        assert im.n_frames == 7 and im.size == (2 * 32 + 2, 12 + 32)
        im.seek(0)
        left = np.asarray(im.convert("RGB"))[12:, :32]
        assert np.abs(left.astype(int) - real[0].repeat(2, 0).repeat(2, 1)).mean() < 12   # one 256-colour palette
        im.seek(6)
        assert (np.asarray(im.convert("RGB"))[12:, :32] == 48).all()                       # no real frame: grey
    assert video_stride(1000) == 2 and video_frames(1000) == 500 and video_frames(16) == 16
    assert video_frames(1001) == len(range(0, 1001, 3))


def reference_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM as eval computed it before: one 2-D float64 Gaussian convolution per local moment."""
    x = torch.from_numpy(a.reshape(-1, *a.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    y = torch.from_numpy(b.reshape(-1, *b.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    size, sigma, C = 11, 1.5, x.shape[1]
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(C, 1, size, size).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=C)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).numpy().reshape(a.shape[:-3])


def test_ssim_matches_the_direct_float64_computation():
    from train.evaluation.evaluate import ssim

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (3, 5, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    flat = np.zeros((2, 16, 16, 3), np.uint8)
    np.testing.assert_allclose(ssim(a, b), reference_ssim(a, b), atol=1e-6)
    np.testing.assert_allclose(ssim(flat, flat + 40), reference_ssim(flat, flat + 40), atol=1e-6)
    assert ssim(a, b).shape == (3, 5)


def test_line_plot_draws_gaps_and_bucket_labels(tmp_path):
    from train.pictures.images import line_plot

    path = line_plot(tmp_path / "p.png", {"a": [1.0, None, 2.0, float("nan"), 3.0], "b": [None] * 5},
                     xticks=["1-16", "17-100", "101-250", "251-500", "501-1000"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_object_area_counts_pixels_at_64x64_so_fewer_gems_read_as_less():
    """'Visible' holds with one gem of three; the area sees the other two missing, at any frame size."""
    from train.evaluation.objects import areas
    from train.games import builtin
    from train.games.probes import probes_for

    gems = probes_for(builtin.ENV_ID)["gems"]
    real = np.zeros((1, 1, 64, 64, 3), np.uint8)
    for x in (10, 30, 50):
        real[0, 0, 30:34, x:x + 4] = builtin.GEM
    dream = real.copy()
    dream[0, 0, :, 25:] = 0                                            # two of the three gems are gone
    assert gems.visible(real[0]).all() and gems.visible(dream[0]).all()
    assert areas(gems, real)[0, 0] == 48 and areas(gems, dream)[0, 0] == 16
    small = real[:, :, ::2, ::2]                                       # the same frame at 32x32
    assert areas(gems, small)[0, 0] == 48


def test_clean_visibility_does_not_count_a_second_ball_or_a_haze_of_specks():
    """Two balls, or ball-coloured specks all over, pass 'visible'; 'clean' counts a dream frame only where it shows
    no more separate objects than the real frame (or, past the real reference, than real frames typically do)."""
    from train.evaluation.long_play import Rollouts
    from train.evaluation.objects import object_report
    from train.games.probes import BREAKOUT_RED, probes_for

    probes = {"ball": probes_for("ale:Breakout")["ball"]}
    real = np.zeros((1, 4, 64, 64, 3), np.uint8)
    real[0, :, 40, 30] = BREAKOUT_RED                                     # one ball in every real frame
    dream = real.copy()
    dream[0, 1, 35, 10] = BREAKOUT_RED                                    # frame 1: a second ball
    dream[0, 2, 32:56:4, 8:56:6] = (np.array(BREAKOUT_RED) * 0.5).astype(np.uint8)   # frame 2: a haze of dim specks
    ok = np.array([[True, True, True, False]])                           # frame 3: past the real reference
    roll = Rollouts(starts=[(0, 0)], seeds=[0], dream=dream, real=real * ok[..., None, None, None], real_ok=ok,
                    actions=np.zeros((1, 4, 3), np.float32), recorded=np.ones((1, 4), bool),
                    last_context=real[:, 0], replay_notes={})
    o = object_report(probes, roll, [slice(0, 4)])["ball"]
    assert o["visible_dream"] == [1.0] and o["ratio"] == pytest.approx(1.0)     # every frame passes "visible"
    assert o["visible_clean_dream"] == [0.5] and o["clean_ratio"] == pytest.approx(0.5)   # frames 0 and 3 are clean


def test_strength_tells_a_dim_speck_from_the_ball_where_visible_does_not():
    """A dream whose ball is a dim red speck passes 'visible' in every frame; its strength (the brightest matched
    pixel against the probe's brightest colour) is under the real ball's, per bucket."""
    from train.evaluation.long_play import Rollouts
    from train.evaluation.objects import object_report
    from train.games.probes import BREAKOUT_RED, probes_for

    probe = probes_for("ale:Breakout")["ball"]
    real = np.zeros((1, 4, 64, 64, 3), np.uint8)
    real[0, :, 40, 30] = BREAKOUT_RED                                     # the full-colour ball
    dream = np.zeros_like(real)
    dream[0, :, 40, 30] = (np.array(BREAKOUT_RED) * 0.35).astype(np.uint8)   # a dim speck where it is
    assert probe.visible(dream).all() and probe.visible(real).all()
    s_real, s_dream = probe.strength(real)[0], probe.strength(dream)[0]
    assert np.all(s_real > 1.0) and np.all(s_dream < 0.45)          # the full colour is past the brightest blend
    assert np.isnan(probe.strength(np.zeros_like(real))).all()        # nothing matched: no strength
    ok = np.ones((1, 4), bool)
    roll = Rollouts(starts=[(0, 0)], seeds=[0], dream=dream, real=real, real_ok=ok,
                    actions=np.zeros((1, 4, 3), np.float32), recorded=ok.copy(), last_context=real[:, 0],
                    replay_notes={})
    o = object_report({"ball": probe}, roll, [slice(0, 2), slice(2, 4)])["ball"]
    assert o["ratio"] == pytest.approx(1.0)
    assert o["strength_dream"] == pytest.approx([float(s_dream[0])] * 2)
    assert all(d < 0.45 * r for d, r in zip(o["strength_dream"], o["strength_real"]))


def test_object_shares_come_with_their_standard_error_over_rollouts():
    """Eight 1,000-frame dreams read an avatar share to about +-0.05: eval says how far another draw could land."""
    from train.evaluation.long_play import Rollouts
    from train.evaluation.objects import object_report, rollout_se
    from train.games.probes import BREAKOUT_RED, probes_for

    probes = {"ball": probes_for("ale:Breakout")["ball"]}
    real = np.zeros((4, 10, 64, 64, 3), np.uint8)
    real[:, :, 40, 30] = BREAKOUT_RED
    dream = real.copy()
    shown = [10, 5, 10, 5]                                         # rollouts 1 and 3 lose the ball half way
    for r, k in enumerate(shown):
        dream[r, k:] = 0
    dream[0, :, 35, 10] = BREAKOUT_RED                             # rollout 0 shows a second ball throughout
    ok = np.ones((4, 10), bool)
    roll = Rollouts(starts=[(0, 0)] * 4, seeds=[0, 1, 2, 3], dream=dream, real=real, real_ok=ok,
                    actions=np.zeros((4, 10, 3), np.float32), recorded=ok.copy(), last_context=real[:, 0],
                    replay_notes={})
    o = object_report(probes, roll, [slice(0, 10)])["ball"]
    per = np.array([1.0, 0.5, 1.0, 0.5])
    assert o["visible_dream_all"] == pytest.approx(0.75)
    assert o["visible_dream_se"] == pytest.approx(per.std(ddof=1) / 2)          # 0.5 spread over 4 rollouts
    assert o["more_than_real"] == pytest.approx(0.25)
    assert o["more_than_real_se"] == pytest.approx(np.array([1.0, 0, 0, 0]).std(ddof=1) / 2)
    assert rollout_se(np.ones((1, 5), bool)) is None                              # one rollout: no spread to read
    steady = np.tile(np.array([True, False]), (6, 3))                             # every rollout alike
    assert rollout_se(steady) == pytest.approx(0.0)


def test_dreams_per_start_draws_each_start_again_with_its_own_noise(tiny, tmp_path):
    """Episodes shorter than context + horizon give one window each; --dreams-per-start K dreams each K times, with
    K noise seeds, so a long eval can read its shares from more draws (and says so in the JSON)."""
    out = tmp_path / "e.json"
    assert cli(*eval_args(tiny, out, "--horizon", "40", "--dreams-per-start", "3")) == 0
    r = no_nan(out.read_text())
    assert r["dreams_per_start"] == 3 and r["rollouts"] == 3 * r["episodes"] and r["frames"] == 40 * r["rollouts"]
    assert r["control"]["starts"] <= r["episodes"]                    # control holds from distinct real starts
    se = r["objects"]["avatar"]["visible_dream_se"]
    assert isinstance(se, float) and se >= 0
    with pytest.raises(SystemExit):                                   # argparse names the flag and its range
        cli(*eval_args(tiny, tmp_path / "bad.json", "--dreams-per-start", "0"))
    assert not (tmp_path / "bad.json").exists()
