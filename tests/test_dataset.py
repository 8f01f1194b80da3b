"""WindowDataset: windows of consecutive frames that never mix episodes, with the action that led to each frame."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from engine.actions import ActionSpec
from train.data.dataset import WindowDataset
from train.data.episodes import EpisodeError, EpisodeWriter

SPEC = ActionSpec(game="test:fake", buttons=("fire",), axes=("step",))
SHAPE = (4, 3, 3)


def frame(episode: int, step: int) -> np.ndarray:
    """A frame that says which episode and step it is: channel 0 = episode, channels 1, 2 = step (base 256)."""
    f = np.empty(SHAPE, np.uint8)
    f[..., 0], f[..., 1], f[..., 2] = episode, step % 256, step // 256
    return f


def action(step: int) -> np.ndarray:
    """The action that leads from frame ``step`` to ``step + 1``."""
    return np.array([step % 2, (step + 1) / 1000.0], np.float32)


def record(path: Path, episode: int, n_frames: int, spec: ActionSpec = SPEC, shape=SHAPE, chunk_frames: int = 8):
    with EpisodeWriter(path, env_id="test:fake", action_spec=spec, frame_shape=shape, chunk_frames=chunk_frames) as w:
        w.append(frame(episode, 0) if shape == SHAPE else np.zeros(shape, np.uint8))
        for t in range(n_frames - 1):
            f = frame(episode, t + 1) if shape == SHAPE else np.zeros(shape, np.uint8)
            w.append(f, action(t) if spec is SPEC else spec.null())
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    for e, n in enumerate([30, 5, 17, 3, 64]):
        record(tmp_path / f"ep{e}.episode", e, n)
    (tmp_path / "ep9.episode.tmp").write_bytes(b"half")     # an unfinished recording is not part of the dataset
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_every_window_is_consecutive_frames_of_one_episode(root):
    ds = WindowDataset(root, window=5)
    lengths = {"ep0.episode": 30, "ep1.episode": 5, "ep2.episode": 17, "ep3.episode": 3, "ep4.episode": 64}
    assert [(e.name, e.frames) for e in ds.episodes] == list(lengths.items())
    assert len(ds) == sum(max(0, n - 5 + 1) for n in lengths.values())
    assert ds.spec == SPEC and ds.frame_shape == SHAPE
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        frames, actions, name, start = item["frames"], item["actions"], item["episode"], item["start"]
        assert frames.shape == (5, *SHAPE) and frames.dtype == np.uint8
        assert actions.shape == (5, 2) and actions.dtype == np.float32
        episode = int(name[2])
        assert np.all(frames[..., 0] == episode), "window mixes episodes"
        steps = frames[:, 0, 0, 1].astype(int) + 256 * frames[:, 0, 0, 2].astype(int)
        assert list(steps) == list(range(start, start + 5))
        for k, t in enumerate(steps):         # actions[k] led to frames[k]; an episode's first frame: null
            expected = SPEC.null() if t == 0 else action(t - 1)
            assert np.array_equal(actions[k], expected), (i, k)
        assert start + 5 <= lengths[name]
        seen.add((name, start))
    assert len(seen) == len(ds)
    assert ds[-1]["start"] == 64 - 5 and ds[-1]["episode"] == "ep4.episode"
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_window_of_one_and_of_a_whole_episode(root):
    assert len(WindowDataset(root, window=1)) == 30 + 5 + 17 + 3 + 64
    ds = WindowDataset(root, window=64)
    assert len(ds) == 1 and ds[0]["episode"] == "ep4.episode"
    with pytest.raises(ValueError, match="window"):
        WindowDataset(root, window=0)


def test_list_of_files_and_pickling(root):
    ds = WindowDataset([root / "ep2.episode", root / "ep0.episode"], window=4)
    assert [e.name for e in ds.episodes] == ["ep2.episode", "ep0.episode"]
    item = ds[3]
    copy = pickle.loads(pickle.dumps(ds))          # as a DataLoader worker receives it: no open files travel
    assert np.array_equal(copy[3]["frames"], item["frames"])


def test_reader_cache_is_bounded(root):
    ds = WindowDataset(root, window=2, open_files=2)
    for i in range(0, len(ds), 3):
        ds[i]
        assert len(ds._readers) <= 2
    ds.close()


def test_dataloader_with_workers(root):
    torch = pytest.importorskip("torch")
    ds = WindowDataset(root, window=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 4, *SHAPE) and batch["frames"].dtype == torch.uint8
    assert batch["actions"].shape == (8, 4, 2) and len(batch["episode"]) == 8


def test_bad_file_raises_naming_it(root):
    bad = root / "ep2.episode"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(EpisodeError, match="ep2.episode"):
        WindowDataset(root, window=4)


def test_skip_bad_warns_and_skips(root):
    (root / "ep2.episode").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="ep2.episode"):
        ds = WindowDataset(root, window=4, skip_bad=True)
    assert "ep2.episode" not in [e.name for e in ds.episodes]
    assert all(ds[i]["episode"] != "ep2.episode" for i in range(len(ds)))


def test_flipped_byte_found_on_read_or_up_front(root):
    path = root / "ep4.episode"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    ds = WindowDataset(root, window=4)                    # opening reads only header and footer
    with pytest.raises(EpisodeError, match="ep4.episode.*checksum mismatch"):
        for i in range(len(ds)):
            ds[i]
    with pytest.warns(UserWarning, match="ep4.episode.*checksum mismatch"):
        ds = WindowDataset(root, window=4, skip_bad=True, verify=True)
    assert "ep4.episode" not in [e.name for e in ds.episodes]


def test_mixed_shapes_or_specs_are_refused(tmp_path):
    record(tmp_path / "a.episode", 0, 10)
    record(tmp_path / "b.episode", 1, 10, shape=(8, 8, 3))
    with pytest.raises(ValueError, match=r"b.episode: frames are \(8, 8, 3\).*one frame shape"):
        WindowDataset(tmp_path, window=2)
    (tmp_path / "b.episode").unlink()
    other = ActionSpec(game="test:other", buttons=("jump",))
    record(tmp_path / "c.episode", 1, 10, spec=other)
    with pytest.raises(ValueError, match="c.episode: action spec .* one action spec"):
        WindowDataset(tmp_path, window=2)


def test_empty_or_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no \*\.episode episode files"):
        WindowDataset(tmp_path, window=2)
    with pytest.raises(FileNotFoundError, match="no such file"):
        WindowDataset(tmp_path / "nope", window=2)
