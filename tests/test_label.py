"""`reverie data label`: episode format v2 (per-action confidence) next to v1, IDM labels on the built-in game that
recover the true actions, every bad request a clear error that writes nothing, and `min_label_confidence`."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from cli_main import cli
from test_episodes import SPEC
from test_episodes import make_data as episode_data

from engine.actions import ActionSpec
from engine.checkpoint import save_checkpoint
from engine.config import ModelConfig
from train.data.episodes import FORMAT_VERSION, MAGIC, PREFIX, TRAILER, Episode, EpisodeError, EpisodeWriter
from train.data.windows import EpisodeSource, pick_windows

GEMS = "builtin:gems"
SIZE = 32                   # 32x32 frames: the IDM trains 4x faster than at 64 and still reads the moves
IDM_STEPS = 450             # batch 32, lr 2e-3: ~30 s on one thread; 0.75-0.8 exact-key accuracy (3 seeds)
MIN_EXACT = 0.6             # asserted exact-key accuracy on held-out episodes ...
MIN_OVER_CHANCE = 0.2       # ... and its margin over always answering the commonest key set (0.35 here)
MIN_PER_BUTTON = 0.8


def make_data(n_actions: int, shape=(6, 5, 3), spec: ActionSpec = SPEC, seed: int = 0):
    """test_episodes.make_data's random frames (n + 1, *shape) and valid actions (n, A), and confidences (n,) in
    [0, 1]."""
    frames, actions = episode_data(n_actions, shape, spec, seed)
    rng = np.random.default_rng(seed + 1)
    return frames, actions, rng.uniform(0, 1, n_actions).astype(np.float32)


def write(path: Path, frames, actions, confidence=None, spec: ActionSpec = SPEC, metadata=None, **kw) -> Path:
    with EpisodeWriter(path, env_id=spec.game, env_version="1", action_spec=spec, frame_shape=frames.shape[1:],
                       seed=3, agent="scripted", metadata=metadata, confidence=confidence is not None, **kw) as w:
        w.extend(frames, actions, confidence)
    return path


def write_v1(path: Path, frames, actions, chunk_frames: int = 4) -> Path:
    """A version-1 file, byte for byte as the version-1 writer laid it out (no confidence anywhere)."""
    h = {"format": 1, "env_id": SPEC.game, "env_version": "1", "seed": 0, "frame_shape": list(frames.shape[1:]),
         "fps": 30.0, "action_spec": SPEC.to_dict(), "agent": "x", "chunk_frames": chunk_frames, "checksum": "crc32",
         "compression": "none", "created": "", "metadata": {}}
    hb = msgpack.packb(h, use_bin_type=True)
    body = PREFIX.pack(MAGIC, 1, len(hb)) + hb
    offsets, counts = [], []
    for first in range(0, len(frames), chunk_frames):
        count = min(chunk_frames, len(frames) - first)
        fb = frames[first:first + count].tobytes()
        ab = actions[max(first, 1) - 1:first + count - 1].astype("<f4").tobytes()
        offsets.append(len(body))
        counts.append(count)
        body += msgpack.packb({"index": len(counts) - 1, "first": first, "count": count, "frames": fb, "actions": ab,
                               "crc": zlib.crc32(ab, zlib.crc32(fb))}, use_bin_type=True)
    footer = msgpack.packb({"frames": len(frames), "actions": len(frames) - 1, "chunk_offsets": offsets,
                            "chunk_counts": counts, "header_crc": zlib.crc32(hb)}, use_bin_type=True)
    path.write_bytes(body + footer + TRAILER.pack(len(body), zlib.crc32(footer), MAGIC))
    return path


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def strip_labels(src: Path, dst: Path) -> Path:
    """Copies of src's episodes as an import without inputs writes them: zero actions, {"labels": "none"}."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.episode")):
        with Episode(p) as ep, EpisodeWriter(dst / p.name, env_id=ep.env_id, env_version=ep.header["env_version"],
                                             action_spec=ep.spec, frame_shape=ep.frame_shape, fps=ep.fps,
                                             seed=ep.header["seed"], agent="video",
                                             metadata={"labels": "none"}) as w:
            w.extend(ep.frames(), np.zeros((ep.num_actions, ep.spec.size), np.float32))
    return dst


# ---- the format: version 2 with confidence, version 1 still read ---------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_round_trip_with_confidence(tmp_path, compression):
    frames, actions, conf = make_data(70)
    path = write(tmp_path / "a.episode", frames, actions, conf, chunk_frames=16, compression=compression)
    with Episode(path) as ep:
        assert ep.version == FORMAT_VERSION and ep.has_confidence and ep.header["confidence"] is True
        assert np.array_equal(ep.frames(), frames) and np.array_equal(ep.actions(), actions)
        assert np.array_equal(ep.confidence(), conf) and ep.confidence().dtype == np.float32
        for a in (0, 1, 15, 16, 17, 31, 64, 70):             # across chunk boundaries
            for b in (a, a + 1, a + 17, 71):
                assert np.array_equal(ep.confidence(a, b), conf[a:b])
                assert np.array_equal(ep.actions(a, b), actions[a:b])
        ep.verify()
    plain = write(tmp_path / "b.episode", frames, actions, compression=compression)
    with Episode(plain) as ep:
        assert ep.version == FORMAT_VERSION and not ep.has_confidence and "confidence" not in ep.header
        assert np.array_equal(ep.confidence(3, 9), np.ones(6, np.float32))
        assert np.array_equal(ep.actions(), actions)


def test_version_1_files_are_still_read(tmp_path, capsys):
    frames, actions, _ = make_data(9, shape=(3, 2, 3))
    folder = tmp_path / "v1"
    folder.mkdir()
    path = write_v1(folder / "old.episode", frames, actions)
    with Episode(path) as ep:
        ep.verify()
        assert ep.version == 1 and not ep.has_confidence and len(ep) == 10
        assert np.array_equal(ep.frames(), frames) and np.array_equal(ep.actions(), actions)
        assert np.array_equal(ep.confidence(), np.ones(9, np.float32))
    assert cli("data", "check", str(folder)) == 0
    capsys.readouterr()
    assert cli("data", "info", str(folder), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format_versions"] == {"v1": 1} and report["labels"] == {"recorded": 1}
    src = EpisodeSource(folder)
    assert src.confidence[0].tolist() == [1.0] * 10


def test_a_changed_confidence_byte_is_caught_by_the_checksum(tmp_path, capsys):
    frames, actions, conf = make_data(40)
    folder = tmp_path / "d"
    folder.mkdir()
    path = write(folder / "a.episode", frames, actions, conf, chunk_frames=8, compression="zlib")
    data = bytearray(path.read_bytes())
    chunk2 = conf[15:23].astype("<f4").tobytes()             # the confidence of chunk 2 (frames 16..23)
    at = data.index(chunk2)
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with Episode(path) as ep:                                 # header and footer are intact: opening works
        assert np.array_equal(ep.confidence(0, 15), conf[:15])
        offset = ep._offsets[2]
        with pytest.raises(EpisodeError, match=rf"at byte {offset}: chunk 2 checksum mismatch"):
            ep.confidence(16, 17)
    capsys.readouterr()
    assert cli("data", "check", str(folder)) == 1
    assert "chunk 2 checksum mismatch" in capsys.readouterr().out


def test_flipped_byte_at_every_offset_of_a_file_with_confidence(tmp_path):
    frames, actions, conf = make_data(9, shape=(3, 2, 3))
    data = write(tmp_path / "small.episode", frames, actions, conf, chunk_frames=4, compression="none").read_bytes()
    bad = tmp_path / "flip.episode"
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0xFF
        bad.write_bytes(bytes(b))
        with pytest.raises(EpisodeError):
            with Episode(bad) as ep:
                ep.verify()


def test_hand_built_confidence_that_lies(tmp_path):
    """Well-formed and checksummed, but a confidence outside [0, 1], of the wrong length, or in a version-1 file."""
    frames, actions, conf = make_data(9, shape=(3, 2, 3))
    good = write(tmp_path / "g.episode", frames, actions, conf, chunk_frames=4, compression="none")

    def rebuilt(name: str, fix_chunk=None, fix_header=None, version: int = FORMAT_VERSION) -> Path:
        with Episode(good) as ep:
            h, offsets, ends = dict(ep.header), ep._offsets, ep._ends
        raw = good.read_bytes()
        if fix_header:
            fix_header(h)
        hb = msgpack.packb(h, use_bin_type=True)
        body = PREFIX.pack(MAGIC, version, len(hb)) + hb
        new_offsets = []
        for i, (a, b) in enumerate(zip(offsets, ends)):
            rec = msgpack.unpackb(raw[a:b])
            if fix_chunk and i == 1:
                fix_chunk(rec)
                rec["crc"] = zlib.crc32(rec["confidence"], zlib.crc32(rec["actions"], zlib.crc32(rec["frames"])))
            new_offsets.append(len(body))
            body += msgpack.packb(rec, use_bin_type=True)
        footer = msgpack.packb({"frames": 10, "actions": 9, "chunk_offsets": new_offsets, "chunk_counts": [4, 4, 2],
                                "header_crc": zlib.crc32(hb)}, use_bin_type=True)
        path = tmp_path / name
        path.write_bytes(body + footer + TRAILER.pack(len(body), zlib.crc32(footer), MAGIC))
        return path

    with Episode(rebuilt("same.episode")) as ep:                # the rebuild itself is faithful
        ep.verify()
        assert np.array_equal(ep.confidence(), conf)
    cases = [
        (rebuilt("over.episode", lambda r: r.update(confidence=np.full(4, 1.5, "<f4").tobytes())),
         "chunk 1 has confidence values outside"),
        (rebuilt("nan.episode", lambda r: r.update(confidence=np.full(4, np.nan, "<f4").tobytes())),
         "chunk 1 has confidence values outside"),
        (rebuilt("short.episode", lambda r: r.update(confidence=r["confidence"][:8])),
         "chunk 1 has 8 confidence bytes, expected 4 x 4"),
        (rebuilt("v1.episode", fix_header=lambda h: h.update(format=1), version=1), "header has unknown keys"),
        (rebuilt("flag.episode", fix_header=lambda h: h.update(confidence="yes")), "must be true or false"),
    ]
    for path, match in cases:
        with pytest.raises(EpisodeError, match=match) as info:
            with Episode(path) as ep:
                ep.verify()
        assert str(path) in str(info.value) and "at byte" in str(info.value)


def test_writer_refuses_confidence_it_cannot_store(tmp_path):
    frames, actions, conf = make_data(3)
    kw = dict(env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3))
    with EpisodeWriter(tmp_path / "plain.episode", **kw) as w:
        w.append(frames[0])
        with pytest.raises(ValueError, match="made without confidence=True"):
            w.append(frames[1], actions[0], 0.5)
    with EpisodeWriter(tmp_path / "sure.episode", confidence=True, **kw) as w:
        with pytest.raises(ValueError, match="reset frame has no action"):
            w.append(frames[0], None, 0.5)
        w.append(frames[0])
        with pytest.raises(ValueError, match="pass one"):
            w.append(frames[1], actions[0])
        for bad in (1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match=r"confidence must be in \[0, 1\]"):
                w.append(frames[1], actions[0], bad)
        with pytest.raises(ValueError, match="need 2 confidences"):
            w.extend(frames[1:3], actions[:2], conf[:1])
        w.extend(frames[1:], actions, conf)
    with Episode(tmp_path / "sure.episode") as ep:
        assert np.array_equal(ep.confidence(), conf)


# ---- labeling the built-in game ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gems(tmp_path_factory) -> dict[str, Path]:
    """24 recorded episodes to train an IDM on, 4 held-out ones and their copies without labels, the IDM, and the
    held-out copies it labeled."""
    root = tmp_path_factory.mktemp("gems")
    d = {"train": root / "train", "true": root / "true", "unlabeled": root / "unlabeled", "idm": root / "idm",
         "labeled": root / "labeled"}
    for key, seed, n in (("train", 1, 24), ("true", 100, 4)):
        assert cli("record", "--env", GEMS, "--agent", "scripted", "--episodes", str(n), "--steps", "200", "--size",
                   str(SIZE), "--out", str(d[key]), "--seed", str(seed), "--no-progress") == 0
    strip_labels(d["true"], d["unlabeled"])
    assert cli("train", "idm", "--data", str(d["train"]), "--out", str(d["idm"]), "--steps", str(IDM_STEPS),
               "--batch", "32", "--lr", "2e-3", "--threads", "1") == 0
    before = digest(d["unlabeled"])
    assert cli("data", "label", str(d["unlabeled"]), "--idm", str(d["idm"] / "idm.safetensors"), "--out",
               str(d["labeled"]), "--threads", "1", "--batch", "64", "--no-progress") == 0
    assert digest(d["unlabeled"]) == before                     # inputs are never modified
    return d


def read_all(folder: Path, what: str) -> np.ndarray:
    out = []
    for p in sorted(folder.glob("*.episode")):
        with Episode(p) as ep:
            out.append(getattr(ep, what)())
    return np.concatenate(out)


def test_idm_labels_recover_the_true_actions(gems):
    pred, true = read_all(gems["labeled"], "actions"), read_all(gems["true"], "actions")
    exact = (pred == true).all(axis=1)
    _, counts = np.unique(true, axis=0, return_counts=True)
    chance = counts.max() / counts.sum()                        # always answering the commonest key set
    assert exact.mean() >= MIN_EXACT and exact.mean() >= chance + MIN_OVER_CHANCE, (exact.mean(), chance)
    assert (pred == true).mean(axis=0).min() >= MIN_PER_BUTTON, (pred == true).mean(axis=0)


def test_confidence_is_a_probability_and_higher_where_the_label_is_right(gems):
    conf = read_all(gems["labeled"], "confidence")
    right = (read_all(gems["labeled"], "actions") == read_all(gems["true"], "actions")).all(axis=1)
    assert conf.min() >= 0 and conf.max() <= 1 and len(conf) == len(right) == 800
    assert conf[right].mean() > conf[~right].mean() + 0.05, (conf[right].mean(), conf[~right].mean())


def test_labeled_copies_keep_frames_and_header_and_say_where_their_labels_came_from(gems, capsys):
    for p in sorted(gems["labeled"].glob("*.episode")):
        with Episode(p) as ep, Episode(gems["unlabeled"] / p.name) as src:
            assert np.array_equal(ep.frames(), src.frames())
            for key in ("env_id", "env_version", "seed", "fps", "agent", "frame_shape", "chunk_frames", "compression"):
                assert ep.header[key] == src.header[key], key
            meta = ep.metadata
            assert meta["labels"] == "idm" and meta["idm"] == str((gems["idm"] / "idm.safetensors").resolve())
            assert meta["mean_confidence"] == pytest.approx(float(ep.confidence().mean()), abs=1e-6)
    assert cli("data", "check", str(gems["labeled"])) == 0
    capsys.readouterr()
    assert cli("data", "info", str(gems["labeled"])) == 0
    assert "labels:       idm x4 (mean confidence" in capsys.readouterr().out


def test_labels_are_the_idm_predictions_and_confidence_the_product_over_buttons(gems):
    from engine.checkpoint import load_checkpoint
    from engine.inverse_dynamics import load_idm, predict
    from train.data.label import button_set_confidence, label_pairs

    idm = load_idm(load_checkpoint(gems["idm"] / "idm.safetensors"))
    with Episode(sorted(gems["unlabeled"].glob("*.episode"))[0]) as ep:
        f = torch.from_numpy(ep.frames(0, 65))
    actions, conf = label_pairs(idm, f[:-1], f[1:], 4)
    assert torch.equal(actions, predict(idm, f[:-1], f[1:], 4))
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-40.0, 60.0]])
    p = torch.sigmoid(logits)
    want = torch.maximum(p, 1 - p).prod(dim=1)                  # the chosen set's probability: 0.25, ...
    torch.testing.assert_close(button_set_confidence(logits), want)
    assert torch.all((conf >= 0) & (conf <= 1))


def test_all_relabels_labeled_episodes_and_skips_them_otherwise(gems, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.episode").write_bytes(next(gems["unlabeled"].glob("*.episode")).read_bytes())
    (mixed / "b.episode").write_bytes(next(gems["true"].glob("*.episode")).read_bytes())
    capsys.readouterr()
    assert cli("data", "label", str(mixed), "--idm", str(gems["idm"]), "--out", str(tmp_path / "o1"), "--threads",
               "1", "--no-progress") == 0
    assert "skipping 1 episode(s) that already carry labels" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "o1").iterdir()] == ["a.episode"]
    assert cli("data", "label", str(mixed), "--idm", str(gems["idm"]), "--out", str(tmp_path / "o2"), "--threads",
               "1", "--no-progress", "--all") == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a.episode", "b.episode"]
    with Episode(tmp_path / "o2" / "b.episode") as ep:
        assert ep.metadata["labels"] == "idm" and ep.has_confidence
    # one episode file as the input
    assert cli("data", "label", str(mixed / "a.episode"), "--idm", str(gems["idm"]), "--out", str(tmp_path / "o3"),
               "--threads", "1", "--no-progress") == 0
    assert [p.name for p in (tmp_path / "o3").iterdir()] == ["a.episode"]


def test_an_error_while_labeling_leaves_only_whole_files(gems, tmp_path, monkeypatch):
    import train.data.label

    real, calls = train.data.label.label_episode, []

    def fail_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train.data.label, "label_episode", fail_on_the_second)
    out = tmp_path / "out"
    assert cli("data", "label", str(gems["unlabeled"]), "--idm", str(gems["idm"]), "--out", str(out), "--threads",
               "1", "--no-progress") == 130
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [".episode"]            # the first episode, whole; no .tmp
    with Episode(files[0]) as ep:
        ep.verify()


# ---- bad requests: one clear line, nothing written -----------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_idm(tmp_path_factory) -> Path:
    """An IDM checkpoint for builtin:gems 32x32 frames (untrained: the error paths never run it)."""
    from engine.inverse_dynamics import InverseDynamics
    from train.games.builtin import ACTION_SPEC

    path = tmp_path_factory.mktemp("idm") / "idm.safetensors"
    return save_checkpoint(path, kind="idm", config=ModelConfig.from_name("tiny", action_dim=4),
                           action_spec=ACTION_SPEC, parts={"idm": InverseDynamics(4).state_dict()},
                           data={"frame_shape": [SIZE, SIZE, 3]})


def test_bad_requests_give_one_line_errors_and_write_nothing(tmp_path, untrained_idm, capsys):
    frames, actions, _ = make_data(5, shape=(SIZE, SIZE, 3))
    fake = tmp_path / "fake"
    fake.mkdir()
    write(fake / "f.episode", frames, actions, metadata={"labels": "none"})      # test:fake, not builtin:gems
    gems_dir = tmp_path / "gems"
    assert cli("record", "--env", GEMS, "--episodes", "1", "--steps", "5", "--size", str(SIZE), "--out",
               str(gems_dir), "--no-progress") == 0
    unlabeled = strip_labels(gems_dir, tmp_path / "unlabeled")
    assert cli("record", "--env", GEMS, "--episodes", "1", "--steps", "5", "--size", "64", "--out",
               str(tmp_path / "g64"), "--no-progress") == 0
    unlabeled64 = strip_labels(tmp_path / "g64", tmp_path / "unlabeled64")
    ae_only = save_checkpoint(tmp_path / "ae.safetensors", kind="ae", config=ModelConfig.from_name("tiny"),
                              action_spec=SPEC, parts={"ae": {"w": torch.zeros(2)}})
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / next(unlabeled.glob("*.episode")).name).write_bytes(b"keep me")
    out = tmp_path / "out"
    idm = str(untrained_idm)
    cases = [
        ([str(fake), "--idm", idm], ["f.episode: its action spec (test:fake v1", "is not the IDM's",
                                     "builtin:gems v1: buttons ['up', 'down', 'left', 'right']"]),
        ([str(unlabeled), "--idm", str(tmp_path / "none.safetensors")], ["--idm", "no such checkpoint file"]),
        ([str(unlabeled), "--idm", str(tmp_path)], ["a folder without idm.safetensors"]),
        ([str(unlabeled), "--idm", str(ae_only)], ["holds no inverse-dynamics model"]),
        ([str(gems_dir), "--idm", idm], ["no unlabeled episodes", "--all"]),
        ([str(tmp_path / "missing"), "--idm", idm], ["no such file or folder"]),
        ([str(unlabeled64), "--idm", idm], ["frames are [64, 64, 3]", "trained on [32, 32, 3]"]),
        ([str(unlabeled), "--idm", idm, "--device", "tpu"], ["--device 'tpu'"]),
    ]
    for argv, needles in cases:
        capsys.readouterr()
        rc = cli("data", "label", *argv, "--out", str(out))
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err and "reverie data: error:" in err, (argv, err)
        for n in needles:
            assert n in err, (n, err)
        assert not out.exists(), argv
    for argv, needle in [([str(unlabeled), "--idm", idm, "--out", str(unlabeled)], "the input folder"),
                         ([str(unlabeled), "--idm", idm, "--out", str(taken)], "already exist"),
                         ([str(unlabeled), "--idm", idm, "--out", str(ae_only)], "a file, not a folder")]:
        capsys.readouterr()
        assert cli("data", "label", *argv) == 1
        assert needle in capsys.readouterr().err
    assert (taken / next(unlabeled.glob("*.episode")).name).read_bytes() == b"keep me"
    assert len(list(unlabeled.iterdir())) == 1
    for flags, needle in [(["--batch", "0"], "--batch"), (["--threads", "0"], "--threads"),
                          (["--batch", "many"], "takes an integer"), ([], "required: --idm")]:
        capsys.readouterr()
        argv = ["data", "label", str(unlabeled), "--out", str(out), *flags]
        argv += [] if not flags else ["--idm", idm]
        with pytest.raises(SystemExit) as info:
            cli(*argv)
        assert info.value.code == 2 and needle in capsys.readouterr().err
        assert not out.exists()


# ---- training on labels: min_label_confidence ---------------------------------------------------------------------
def confident_folder(folder: Path, n_episodes: int = 3, n_actions: int = 40) -> tuple[Path, np.ndarray]:
    """Episodes whose actions under confidence 0.5 are all four buttons at once (which the gems agent never
    presses), so a batch shows whether it holds a low-confidence label."""
    from train.games.builtin import ACTION_SPEC

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    marker = np.ones(4, np.float32)
    for e in range(n_episodes):
        frames = rng.integers(0, 256, (n_actions + 1, 64, 64, 3), dtype=np.uint8)
        conf = rng.uniform(0.5, 1.0, n_actions).astype(np.float32)
        conf[rng.choice(n_actions, 3, replace=False)] = 0.1
        actions = np.zeros((n_actions, 4), np.float32)
        actions[np.arange(n_actions), rng.integers(0, 4, n_actions)] = 1
        actions[conf < 0.5] = marker
        write(folder / f"e{e}.episode", frames, actions, conf, spec=ACTION_SPEC, chunk_frames=8)
    return folder, marker


def test_min_label_confidence_drops_unsure_windows_from_the_batch(tmp_path):
    folder, marker = confident_folder(tmp_path / "d")
    src = EpisodeSource(folder)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        win = src.sample(gen, 16, 4, min_confidence=0.5)
        assert win.confidence.shape == (16, 4) and float(win.confidence.min()) >= 0.5
        assert not (win.actions == torch.from_numpy(marker)).all(dim=-1).any()
    every = src.sample(torch.Generator().manual_seed(0), 256, 4)
    assert (every.actions == torch.from_numpy(marker)).all(dim=-1).any()    # the marked labels are there to drop
    assert float(every.confidence.min()) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lower the threshold"):
        src.sample(gen, 4, 40, min_confidence=0.5)


def test_without_a_threshold_windows_are_drawn_exactly_as_before(tmp_path):
    folder, _ = confident_folder(tmp_path / "d", n_episodes=4)
    src = EpisodeSource(folder)
    src.lengths[2] = 3                                           # an episode too short for the window draws nothing
    for step in range(5):
        window, batch = 6, 8
        gen = torch.Generator().manual_seed(step)
        lens = torch.tensor(src.lengths, dtype=torch.float64)     # the draw of train_wm and EpisodeSource until v2
        weights = torch.where(lens >= window, lens - window + 1, torch.zeros_like(lens))
        eps = torch.multinomial(weights, batch, replacement=True, generator=gen).tolist()
        old = [(e, int(torch.randint(0, src.lengths[e] - window + 1, (1,), generator=gen))) for e in eps]
        new = pick_windows(torch.Generator().manual_seed(step), src.window_starts(window), batch)
        assert new == old


def test_train_wm_min_label_confidence(tmp_path, monkeypatch, capsys):
    """`reverie train wm --set min_label_confidence=X`: the batches it trains on hold no unsure label; too high a
    value is a one-line error, and so is one outside 0..1."""
    import train.training.wm

    folder, marker = confident_folder(tmp_path / "d", n_episodes=2)
    assert cli("train", "ae", "--data", str(folder), "--out", str(tmp_path / "ae"), "--steps", "1", "--batch", "2",
               "--threads", "1") == 0

    class Seen(Exception):
        pass

    def fake_fit(*, batch_fn, dist_info, **kw):
        raise Seen(torch.cat([batch_fn(step, dist_info)[1] for step in range(30)]))   # (30 B, W, A)

    monkeypatch.setattr(train.training.wm, "fit", fake_fit)
    argv = ["train", "wm", "--data", str(folder), "--ae", str(tmp_path / "ae"), "--batch", "4", "--window", "4",
            "--threads", "1", "--no-resume"]
    seen = {}
    for x in ("0", "0.5"):
        with pytest.raises(Seen) as info:
            cli(*argv, "--out", str(tmp_path / f"wm{x}"), "--set", f"min_label_confidence={x}")
        seen[x] = (info.value.args[0] == torch.from_numpy(marker)).all(dim=-1)
    assert seen["0"].any() and not seen["0.5"].any()
    assert "training on" in capsys.readouterr().out
    assert cli(*argv, "--out", str(tmp_path / "wm1"), "--set", "min_label_confidence=0.99") == 1
    assert "no window of 4 frames has every action that sure" in capsys.readouterr().err
    assert cli(*argv, "--out", str(tmp_path / "wm2"), "--set", "min_label_confidence=2") == 1
    assert "--set min_label_confidence=2.0: must be in [0, 1]" in capsys.readouterr().err


def test_labeled_copies_keep_each_steps_reward_and_end(gems, tmp_path):
    """A recording with rewards (format 3) relabeled by the IDM keeps its rewards and end flags, so a reward model can
    still train on it; an import without rewards stays without."""
    out = tmp_path / "relabeled"
    assert cli("data", "label", str(gems["true"]), "--idm", str(gems["idm"]), "--out", str(out), "--threads", "1",
               "--no-progress", "--all") == 0
    for p in sorted(gems["true"].glob("*.episode")):
        with Episode(p) as src, Episode(out / p.name) as ep:
            assert src.has_reward and ep.has_reward
            assert np.array_equal(ep.rewards(), src.rewards()) and np.array_equal(ep.ends(), src.ends())
            assert ep.end == src.end
    with Episode(next(gems["labeled"].glob("*.episode"))) as ep:
        assert not ep.has_reward
