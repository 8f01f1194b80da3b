"""Object probes (train/games/probes.py) on real frames: they find the avatar, gems, enemies and score of builtin:gems
where the game state says they are, never see an avatar that is not drawn, scale with the frame size, and find
Breakout's paddle, bricks and ball where the Atari RAM says they are."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ReverieError
from train.games.builtin import BACKGROUND, HUD_HEIGHT, PLAYER_FLASH, GemsGame
from train.games.probes import AVATAR, Probe, ProbeError, blob_counts, mask_centroids, probes_for
from train.games.registry import make_agent, make_game

GEMS = probes_for("builtin:gems")


def play(seed: int, steps: int, agent: str = "scripted", size: int = 64) -> tuple[list[np.ndarray], list[dict]]:
    """Frames and the game state of each frame, of one episode played by an agent."""
    game = make_game("builtin:gems", size=size, seed=seed)
    bot = make_agent(agent, game, seed)
    frame = game.reset(seed)
    bot.reset(seed)
    frames, states = [frame], [game.state_dict()]
    for _ in range(steps):
        frame, done = game.step(bot.act(frame))
        frames.append(frame)
        states.append(game.state_dict())
        if done:
            break
    return frames, states


def boxes(state: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the state draws the player, the gems and the enemies (64x64 masks; later sprites cover earlier)."""
    player, gems, enemies = (np.zeros((64, 64), bool) for _ in range(3))
    s, g, e = state["config"]["player_size"], state["config"]["gem_size"], state["config"]["enemy_size"]
    for x, y in state["gems"]:
        gems[y:y + g, x:x + g] = True
    for x, y, *_ in state["enemies"]:
        enemies[y:y + e, x:x + e] = True
    x, y = state["player"]
    player[y:y + s, x:x + s] = True
    return player, gems & ~enemies & ~player, enemies & ~player


@pytest.mark.parametrize("seed, agent", [(0, "scripted"), (1, "random"), (2, "scripted"), (3, "random")])
def test_gems_probes_find_what_the_state_says(seed, agent):
    frames, states = play(seed, 250, agent)
    avatar, gems, enemies, score = GEMS[AVATAR], GEMS["gems"], GEMS["enemies"], GEMS["score"]
    fr = np.stack(frames)
    centres = avatar.centroid(fr)
    assert avatar.visible(fr).all() and score.visible(fr).all()
    for t, st in enumerate(states):
        player, gem_px, enemy_px = boxes(st)
        x, y = st["player"]
        assert np.abs(centres[t] - (x + 3, y + 3)).max() <= 1.0, (t, centres[t], st["player"])
        assert np.array_equal(avatar.mask(fr[t]), player)
        assert np.array_equal(gems.mask(fr[t]), gem_px)
        assert np.array_equal(enemies.mask(fr[t]), enemy_px)
        assert gems.visible(fr[t]) == (gem_px.sum() >= 8)
        assert enemies.visible(fr[t]) == (enemy_px.sum() >= 12)
        # counts: 16 px a gem, 25 an enemy, less what overlaps
        assert gems.count(fr[t]) <= 16 * len(st["gems"]) and enemies.count(fr[t]) <= 25 * len(st["enemies"])
        assert score.mask(fr[t])[HUD_HEIGHT:].sum() == 0 and score.count(fr[t]) >= 7   # "7" has 7 pixels
    # mostly apart: the counts match the sprites
    gem_counts = gems.count(fr) / np.array([16 * len(s["gems"]) for s in states])
    assert np.median(gem_counts) == 1.0
    # one avatar in every frame; as many gems as the state holds where they lie apart (two that touch are one group)
    # and none is hidden under another sprite
    assert (avatar.blobs(fr) == 1).all()
    n_gems = gems.blobs(fr)
    for t, st in enumerate(states):
        g = st["config"]["gem_size"]
        apart = all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) > g for i, a in enumerate(st["gems"])
                    for b in st["gems"][i + 1:])
        _, gem_px, _ = boxes(st)
        whole = all(gem_px[y:y + g, x:x + g].all() for x, y in st["gems"])
        assert n_gems[t] <= len(st["gems"])
        if apart and whole:
            assert n_gems[t] == len(st["gems"]), (t, st["gems"])


def test_blob_counts_count_touching_groups_of_enough_pixels():
    m = np.zeros((4, 10, 10), bool)
    m[0, 1:3, 1:3] = m[0, 6:9, 6:9] = True        # two squares apart: 4 and 9 pixels
    m[1, 2, 2] = m[1, 3, 3] = m[1, 4, 4] = True    # a diagonal chain touches (8-neighbour): one group of 3
    m[2, 0, :] = m[2, 9, :] = True                 # two rows at the edges
    m[2, :, 0] = True                              # joined by a column: one U-shaped group
    assert blob_counts(m, 1).tolist() == [2, 1, 1, 0]
    assert blob_counts(m, 5).tolist() == [1, 0, 1, 0]    # the 4-pixel square and the chain are too small
    assert blob_counts(m.reshape(2, 2, 10, 10), 1).tolist() == [[2, 1], [1, 0]]   # leading axes kept
    two = np.zeros((64, 64, 3), np.uint8)
    two[...] = BACKGROUND
    two[20:26, 10:16] = two[40:46, 40:46] = GEMS[AVATAR].colours[0]   # two avatars: visible, twice the area, 2
    assert GEMS[AVATAR].visible(two) and GEMS[AVATAR].blobs(two) == 2
    from train.games.probes import blob_centres

    assert blob_centres(m[0], 1).tolist() == [[2.0, 2.0], [7.5, 7.5]]          # the two squares' middles, (x, y)
    assert blob_centres(m[0], 5).tolist() == [[7.5, 7.5]]
    assert blob_centres(m[3], 1).shape == (0, 2)
    assert blob_centres(GEMS[AVATAR].mask(two), 9).tolist() == [[13.0, 23.0], [43.0, 43.0]]


def test_avatar_found_while_flashing_and_after_a_hit():
    game = GemsGame(size=64)
    game.reset(7)
    seen_flash = 0
    for k in range(game.config.invulnerable_frames):
        game.invulnerable = game.config.invulnerable_frames - k
        frame = game.frame()
        x, y = game.player
        if (frame[y:y + 6, x:x + 6] == PLAYER_FLASH).all():
            seen_flash += 1
        assert GEMS[AVATAR].visible(frame) and GEMS[AVATAR].count(frame) == 36
        assert np.allclose(GEMS[AVATAR].centroid(frame), (x + 3, y + 3))
    assert seen_flash >= 8
    # drive the player into an enemy: it respawns flashing at the centre, and the probe follows it
    state = game.state_dict()
    state["invulnerable"] = 0
    sx, sy = game.spawn_point()
    state["enemies"] = [[sx + 8, sy, 0, 0]] + state["enemies"][1:]
    state["player"] = [sx + 8 - 6, sy]
    game.load_state_dict(state)
    lives = game.lives
    frame, _ = game.step(game.action_spec.encode(["right"]))
    assert game.lives == lives - 1 and game.invulnerable > 0
    assert np.allclose(GEMS[AVATAR].centroid(frame), (sx + 3, sy + 3))


@pytest.mark.parametrize("seed", [0, 5])
def test_no_avatar_when_it_is_not_drawn(seed):
    frames, states = play(seed, 120, "random")
    for frame, st in zip(frames, states):
        player, _, _ = boxes(st)
        for colour in (None, PLAYER_FLASH):   # as drawn, and flashing white
            f = frame.copy()
            if colour is not None:
                f[player] = colour
                assert GEMS[AVATAR].visible(f)
            f[player] = BACKGROUND
            assert GEMS[AVATAR].count(f) == 0 and not GEMS[AVATAR].visible(f)
            assert np.isnan(GEMS[AVATAR].centroid(f)).all()
    # a frame of nothing but background, HUD, gems and enemies (the HUD text is near the flash white: the region
    # keeps it out)
    hud_only = frames[0].copy()
    hud_only[HUD_HEIGHT:] = BACKGROUND
    assert GEMS[AVATAR].count(hud_only) == 0 and GEMS["score"].visible(hud_only)


@pytest.mark.parametrize("size", [128, 96, 32])
def test_probes_scale_with_the_frame_size(size):
    frames, states = play(3, 60, "scripted", size=size)
    fr = np.stack(frames)
    small = np.stack(play(3, 60, "scripted", size=64)[0])
    avatar = GEMS[AVATAR]
    c = avatar.centroid(fr) * 64 / size
    for t, st in enumerate(states):
        x, y = st["player"]
        assert np.abs(c[t] - (x + 3, y + 3)).max() <= 1.0
    for p in GEMS.values():
        assert np.array_equal(p.visible(fr), p.visible(small)), p.name
    if size == 128:   # an exact 2x upscale: four times the pixels, twice the coordinates
        assert np.array_equal(avatar.count(fr), 4 * avatar.count(small))
        assert np.allclose(avatar.centroid(fr), 2 * avatar.centroid(small))
        assert avatar.region_at(128, 128) == (16, 128, 0, 128) and avatar.min_pixels_at(128, 128) == 36


def test_shapes_and_errors():
    avatar = GEMS[AVATAR]
    batch = np.zeros((2, 3, 64, 64, 3), np.uint8)
    assert avatar.mask(batch).shape == (2, 3, 64, 64) and avatar.count(batch).shape == (2, 3)
    assert avatar.visible(batch).shape == (2, 3) and avatar.centroid(batch).shape == (2, 3, 2)
    with pytest.raises(ProbeError):
        avatar.count(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ReverieError):
        Probe("bad", ((0, 0, 300),), 1)
    with pytest.raises(ReverieError):
        Probe("bad", ((0, 0, 0),), 1, region=(8, 4, 0, 64))
    assert probes_for("gym:CartPole-v1") == {}
    assert set(GEMS) == {"avatar", "gems", "enemies", "score"}
    assert set(probes_for("ale:Breakout")) == {"paddle", "ball", "bricks"}
    assert set(probes_for("vizdoom:basic")) == {"monster"}


# ---- Breakout --------------------------------------------------------------------------------------------------
BALL_X, BALL_Y = 99, 101       # Breakout RAM: ball column and row
RAW_DX, RAW_DY = -49, 9        # measured: the ball's top-left pixel in the 210x160 screen is (x - 49, y + 9)


def played_with_ram(env_id: str, seed: int, steps: int, fire_every: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, 64, 64, 3), RAM (T, 128)) of `steps` random actions in an Atari game (fire every `fire_every`
    steps where given: Breakout serves), from the reset of `seed`, until the episode ends."""
    game = make_game(env_id, size=64, seed=0)
    try:
        ale = game.env.unwrapped.ale
        agent = make_agent("random", game, seed=seed)
        frames, rams = [game.reset(seed)], [ale.getRAM().copy()]
        fire = game.action_spec.encode(["fire"])
        for t in range(steps):
            frame, done = game.step(fire if fire_every and t % fire_every == 0 else agent.act(frames[-1]))
            frames.append(frame)
            rams.append(ale.getRAM().copy())
            if done:
                break
    finally:
        game.close()
    return np.stack(frames), np.stack(rams)


def test_breakout_paddle_bricks_and_ball():
    pytest.importorskip("gymnasium")
    pytest.importorskip("ale_py")
    fr, ram = played_with_ram("ale:Breakout", seed=1, steps=150, fire_every=40)
    ram = ram.astype(int)
    p = probes_for("ale:Breakout")
    assert p["paddle"].visible(fr).all()
    assert p["bricks"].visible(fr[0]) and p["bricks"].count(fr[0]) > 400
    top, left = ram[:, BALL_Y] + RAW_DY, ram[:, BALL_X] + RAW_DX      # the ball's rows top..top+3, columns left..+1
    in_play = (ram[:, BALL_Y] > 0) & (top >= 96) & (top + 3 <= 186)  # between the bricks and the paddle
    off_screen = (ram[:, BALL_Y] == 0) | (top >= 196)
    assert in_play.sum() >= 30 and off_screen.sum() >= 1
    seen = p["ball"].visible(fr)
    assert seen[in_play].mean() >= 0.95
    assert not seen[off_screen].any()
    c = p["ball"].centroid(fr[in_play & seen])
    expected = np.stack([(left + 1) * 64 / 160, (top + 2) * 64 / 210], axis=-1)[in_play & seen]
    assert np.abs(c - expected).max() <= 1.5


def test_breakout_ball_is_not_decoder_noise():
    """A reconstruction without the ball has dark, faintly warm noise at the wall edges; the ball probe once took it
    for the ball in every reconstructed frame. The dim ball blends it must still find."""
    ball = probes_for("ale:Breakout")["ball"]
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[53:57, 3] = frame[53:57, 60] = (37, 26, 20)           # decoder noise beside the side walls
    frame[40, 30] = (38, 35, 40)
    assert not ball.visible(frame)
    for blend in ((111, 40, 40), (160, 58, 58), (68, 43, 43), (70, 25, 25)):   # measured ball pixels at 64x64
        f = frame.copy()
        f[45, 20] = blend
        assert ball.visible(f), blend


def test_token_masks_mark_the_tokens_the_state_draws_objects_in():
    # the world model's 4x4 tokens of 16x16 px (tiny: 8x8 latent, patch 2), row-major as patchify orders them
    from train.games.probes import token_masks

    frames, states = play(5, 120)
    fr = np.stack(frames)
    got = token_masks(fr, [GEMS[AVATAR]], (4, 4))
    both = token_masks(fr, [GEMS[AVATAR], GEMS["enemies"]], (4, 4))
    assert got.shape == (len(frames), 16) and got.dtype == bool
    for t, st in enumerate(states):
        player, _, enemy_px = boxes(st)
        want = player.reshape(4, 16, 4, 16).any(axis=(1, 3)).reshape(16)
        assert np.array_equal(got[t], want), t
        assert np.array_equal(both[t], want | enemy_px.reshape(4, 16, 4, 16).any(axis=(1, 3)).reshape(16)), t
    assert 1 <= got.sum(axis=1).min() and got.sum(axis=1).max() <= 4   # a 6x6 avatar spans one to four tokens
    with pytest.raises(ProbeError, match="token grid"):
        token_masks(fr[:2], [GEMS[AVATAR]], (3, 3))


def test_shared_tokens_are_the_frames_where_avatar_and_enemy_meet_in_one_token():
    from train.games.probes import shared_tokens

    frames, states = play(5, 400)
    fr = np.stack(frames)
    got = shared_tokens(fr, GEMS[AVATAR], GEMS["enemies"], (4, 4))
    want = []
    for st in states:
        player, _, enemy_px = boxes(st)
        tok = lambda m: m.reshape(4, 16, 4, 16).any(axis=(1, 3))  # noqa: E731
        want.append(bool((tok(player) & tok(enemy_px)).any()))
    assert got.shape == (len(frames),) and got.dtype == bool
    assert np.array_equal(got, np.array(want))
    assert 0 < got.sum() < len(got)   # the game's play has both kinds of frame


def _brick_rollout(dream: np.ndarray, real: np.ndarray):
    from train.evaluation.long_play import Rollouts

    ok = np.ones(real.shape[:2], bool)
    return Rollouts(starts=[(0, 0)] * len(real), seeds=list(range(len(real))), dream=dream, real=real, real_ok=ok,
                    actions=np.zeros(real.shape[:2] + (4,), np.float32), recorded=ok.copy(),
                    last_context=real[:, 0], replay_notes={})


def test_bricks_that_vanish_where_no_ball_has_been_are_told_from_bricks_the_ball_broke():
    """'Bricks break' by area passes a dream whose bricks vanish on their own or grow back; `hits` attributes each
    broken brick to the ball when the ball was just below it, and counts what comes back."""
    from train.evaluation.objects import object_report
    from train.games.probes import BREAKOUT_BRICKS, BREAKOUT_RED, hits_for

    probes = probes_for("ale:Breakout")
    frames = np.zeros((1, 12, 64, 64, 3), np.uint8)
    frames[..., 26:29, 4:60, :] = BREAKOUT_BRICKS[5]                    # the bottom brick row
    real, dream = frames.copy(), frames.copy()
    for t in range(4):                                                 # real: the ball rises under column 20 ...
        real[0, t, 36 - 2 * t, 20] = BREAKOUT_RED
    real[0, 4:, 26:29, 18:22] = 0                                      # ... and the brick above it breaks
    dream[0, :4] = real[0, :4]                                         # the dream's ball rises the same way ...
    dream[0, 4:, 26:29, 46:50] = 0                                     # ... and a brick 28 px away vanishes
    dream[0, 9:, 26:29, 46:50] = BREAKOUT_BRICKS[5]                    # and comes back five frames later
    dream[0, 6, 26:29, 30:34] = 0                                      # a one-frame flicker is no break
    dream[0, 3, 26:29, 8:12] = (np.array(BREAKOUT_BRICKS[5]) * 0.7).astype(np.uint8)   # a brick that fades: dim,
    dream[0, 4:, 26:29, 8:12] = 0                                                       # then gone, counts once
    dream[0, 2:4, 28, 40:44] = (np.array(BREAKOUT_BRICKS[5]) * 0.8).astype(np.uint8)   # a border that wobbles
    o = object_report(probes, _brick_rollout(dream, real), [slice(0, 6), slice(6, 12)],
                      hits_for("ale:Breakout"))["bricks"]["hits"]
    assert o["by"] == "ball"
    assert o["gone_real"] == [12.0, 0.0] and o["reached_real"] == 1.0 and o["unreached_real"] == 0.0
    assert o["gone_dream"] == [24.0, 0.0] and o["reached_dream"] == 0.0 and o["unreached_dream"] == 24.0
    assert o["back_real"] == 0.0 and o["back_dream"] == 12.0
    assert hits_for("builtin:gems") == []


def test_bricks_broken_in_real_breakout_are_reached_by_the_ball_and_a_ball_from_elsewhere_is_not():
    """The Hit rule's reach, on real play of the scripted agent: the real ball is in reach of nearly every brick that
    breaks; the same ball shifted 10 frames in time is in reach of few of them (chance)."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("ale_py")
    from train.evaluation.objects import object_report
    from train.games.probes import hits_for

    game = make_game("ale:Breakout", size=64, seed=500_000)
    try:
        agent = make_agent("scripted", game, seed=500_000)
        frames = [game.reset(500_000)]
        for _ in range(400):
            frame, done = game.step(agent.act(frames[-1]))
            frames.append(frame)
            if done:
                break
    finally:
        game.close()
    real = np.stack(frames)[None]
    shifted = real.copy()
    shifted[..., 29:57, :, :] = np.roll(real[..., 29:57, :, :], 10, axis=1)   # the ball from 10 frames before
    o = object_report(probes_for("ale:Breakout"), _brick_rollout(shifted, real), [slice(0, real.shape[1])],
                      hits_for("ale:Breakout"))["bricks"]["hits"]
    assert o["gone_real"][0] >= 12                                      # at least two bricks broke
    assert o["reached_real"] >= 0.9 and o["back_real"] == 0.0
    assert o["gone_dream"] == o["gone_real"] and o["reached_dream"] <= 0.3


# ---- Doom ------------------------------------------------------------------------------------------------------
def test_doom_monster_where_the_labels_buffer_puts_it(tmp_path, monkeypatch):
    """vizdoom's labels buffer marks the monster's own pixels; the probe finds it in (almost) every frame of scripted
    and random play, its centroid on the monster, and nothing once the monster's pixels are painted over."""
    pytest.importorskip("vizdoom")
    from train.games.gym_adapters import resize_area

    monkeypatch.chdir(tmp_path)
    game = make_game("vizdoom:basic", size=64, seed=0)
    game.game.close()
    game.game.set_labels_buffer_enabled(True)
    game.game.init()
    frames, masks = [], []
    try:
        for agent, seeds in (("scripted", range(900, 904)), ("random", range(950, 952))):
            bot = make_agent(agent, game, 0)
            for seed in seeds:
                frame, done = game.reset(seed), False
                bot.reset(seed)
                while not done:
                    state = game.game.get_state()
                    ids = [lab.value for lab in state.labels if lab.object_name != "DoomPlayer"]
                    mask = np.isin(state.labels_buffer, ids).astype(np.uint8) * 255
                    masks.append(resize_area(np.repeat(mask[..., None], 3, axis=2), 64)[..., 0])
                    frames.append(frame)
                    frame, done = game.step(bot.act(frame))
    finally:
        game.close()
    fr, ms = np.stack(frames), np.stack(masks)
    monster = probes_for("vizdoom:basic")["monster"]
    assert len(fr) >= 150 and (ms > 128).any(axis=(1, 2)).all()
    seen = monster.visible(fr)
    assert seen.mean() >= 0.97
    assert not (monster.mask(fr) & (ms == 0)).any()                     # no pixel off the monster
    truth = mask_centroids(ms > 128)
    assert np.nanmedian(np.abs(monster.centroid(fr[seen]) - truth[seen]).max(axis=-1)) <= 1.5
    painted = fr.copy()
    painted[ms > 0] = (80, 60, 40)                                       # a wall brown
    assert not monster.visible(painted).any()


# ---- Boxing ----------------------------------------------------------------------------------------------------
BOXING_PLAYER_X, BOXING_PLAYER_Y = 32, 34     # Boxing RAM (AtariARI's labels): the player's boxer


def test_boxing_avatar_is_the_players_boxer():
    """The white boxer is found in every frame, and its centroid moves with the player's position in the RAM (the
    opponent, black, is a probe of its own), so eval's control test reads how far a held key moves the player."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("ale_py")
    fr, ram = played_with_ram("ale:Boxing", seed=3, steps=200)
    ram = ram.astype(float)
    p = probes_for("ale:Boxing")
    assert p["avatar"].visible(fr).all() and p["opponent"].visible(fr).all()
    c = p["avatar"].centroid(fr)                              # (T, 2) x, y
    for axis, addr in ((0, BOXING_PLAYER_X), (1, BOXING_PLAYER_Y)):
        assert np.ptp(ram[:, addr]) > 10, "the random agent should move the boxer"
        assert np.corrcoef(c[:, axis], ram[:, addr])[0, 1] > 0.9
