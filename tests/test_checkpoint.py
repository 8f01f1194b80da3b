"""Checkpoint files: round trip, every kind of bad file rejected with a CheckpointError naming it, atomic writes,
and the CLI turning a bad --model into a one-line error (exit 1, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import reverie_cli
from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder
from engine.checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from engine.config import AutoencoderConfig, ModelConfig, WorldModelConfig
from engine.world_model import WorldModel
from train.data.windows import EpisodeSource

REPO = Path(__file__).resolve().parents[1]
SPEC = ActionSpec(game="test", buttons=("a", "b", "c", "d"))


def tiny_config(**wm) -> ModelConfig:
    ae = AutoencoderConfig(height=32, width=32, latent_channels=4, encoder_channels=(8, 8, 8),
                           decoder_channels=(8, 8, 8))
    base = dict(d_model=32, heads=2, backbone_layers=2, head_layers=1, context_frames=4, latent_height=4,
                latent_width=4, latent_channels=4)
    cfg = ModelConfig(name="test", autoencoder=ae, world_model=WorldModelConfig(**{**base, **wm}))
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def models() -> tuple[Autoencoder, WorldModel]:
    torch.manual_seed(0)
    cfg = tiny_config()
    return Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model)


def write(path: Path, models, parts=("ae", "wm"), spec: ActionSpec = SPEC, config: ModelConfig | None = None,
          **kw) -> Path:
    ae, wm = models
    sd = {"ae": ae.state_dict(), "wm": wm.state_dict()}
    return save_checkpoint(path, kind="world_model", config=config or tiny_config(), action_spec=spec,
                           parts={p: sd[p] for p in parts}, **kw)


@pytest.fixture
def ckpt_path(tmp_path, models) -> Path:
    return write(tmp_path / "model.safetensors", models, data={"episodes": 2}, metrics={"loss": 0.5},
                 extra={"note": "x"})


def rewrite(src: Path, dst: Path, meta: dict | None = None, drop_meta: tuple[str, ...] = (),
            tensors: dict | None = None) -> Path:
    """Copy a checkpoint with some metadata entries or tensors replaced (what a damaged or foreign file holds)."""
    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata() or {})
        flat = {k: f.get_tensor(k) for k in f.keys()}
    m.update(meta or {})
    for k in drop_meta:
        m.pop(k, None)
    flat.update(tensors or {})
    save_file(flat, str(dst), metadata=m)
    return dst


def rejects(path: Path, *match: str) -> str:
    """load_checkpoint(path) raises CheckpointError whose message names the file and contains `match`."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_keeps_weights_config_spec_and_metadata(ckpt_path, models):
    ae, wm = models
    ck = load_checkpoint(ckpt_path)
    assert ck.kind == "world_model" and ck.has("ae") and ck.has("wm") and not ck.has("idm")
    assert ck.config == tiny_config() and ck.action_spec == SPEC
    assert ck.data == {"episodes": 2} and ck.metrics == {"loss": 0.5} and ck.extra == {"note": "x"}
    wm2 = load_into(WorldModel(ck.config.world_model), ck, "wm")
    ae2 = load_into(Autoencoder(ck.config.autoencoder), ck, "ae")
    for a, b in ((wm, wm2), (ae, ae2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(p.name for p in ckpt_path.parent.iterdir()) == ["model.safetensors"]  # no temporary left


# ---------------------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    rejects(tmp_path / "nope.safetensors", "no such checkpoint file")


def test_folder(tmp_path):
    folder = tmp_path / "run.safetensors"
    folder.mkdir()
    rejects(folder, "is a folder")


@pytest.mark.parametrize("size", [0, 7, 300, 5000])
def test_random_bytes(tmp_path, size):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(size) if size else b"")
    rejects(path, "not a readable safetensors file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is not a checkpoint\n" * 20)
    rejects(path)


@pytest.mark.parametrize("keep", [6, 100, 0.5, -1])
def test_truncated_checkpoint(tmp_path, ckpt_path, keep):
    data = ckpt_path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(data) + keep)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:n])
    rejects(path, "not a readable safetensors file", "truncated")


def test_safetensors_without_reverie_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"wm.x": torch.zeros(2)}, str(path))
    rejects(path, "not a Reverie checkpoint")
    save_file({"wm.x": torch.zeros(2)}, str(path), metadata={"format": "pt", "format_version": "1"})
    rejects(path, "not a Reverie checkpoint")


@pytest.mark.parametrize("version", ["2", "0", None])
def test_wrong_format_version(tmp_path, ckpt_path, version):
    dst = tmp_path / "v.safetensors"
    if version is None:
        rewrite(ckpt_path, dst, drop_meta=("format_version",))
    else:
        rewrite(ckpt_path, dst, meta={"format_version": version})
    rejects(dst, "format version", "reads version 1")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensor(tmp_path, ckpt_path, value):
    with safe_open(str(ckpt_path), framework="pt") as f:
        t = f.get_tensor("wm.head.out.weight").clone()
    t[0, 0] = value
    dst = rewrite(ckpt_path, tmp_path / "nan.safetensors", tensors={"wm.head.out.weight": t})
    rejects(dst, "'wm.head.out.weight'", "NaN or Inf")


def test_unexpected_tensor_name(tmp_path, ckpt_path):
    dst = rewrite(ckpt_path, tmp_path / "extra.safetensors", tensors={"optimizer.x": torch.zeros(1)})
    rejects(dst, "unexpected tensor 'optimizer.x'")


@pytest.mark.parametrize("key,value", [
    ("config", "{not json"),
    ("config", json.dumps({"name": "x"})),                                    # no autoencoder / world_model
    ("config", json.dumps({"autoencoder": {"bogus": 1}, "world_model": {}})),  # unknown field
    ("action_spec", json.dumps({"game": "test"})),                            # no buttons
    ("action_spec", json.dumps({"game": "test", "buttons": ["A B"]})),        # bad control name
    ("metrics", "[1, 2"),
])
def test_bad_metadata(tmp_path, ckpt_path, key, value):
    dst = rewrite(ckpt_path, tmp_path / "meta.safetensors", meta={key: value})
    rejects(dst, "bad metadata")


def test_missing_config_metadata(tmp_path, ckpt_path):
    dst = rewrite(ckpt_path, tmp_path / "meta.safetensors", drop_meta=("config",))
    rejects(dst, "bad metadata")


@pytest.mark.parametrize("mutate", ["height_str", "strides_int", "autoencoder_list"])
def test_wrong_typed_config_field(tmp_path, ckpt_path, mutate):
    cfg = tiny_config().to_dict()
    if mutate == "height_str":
        cfg["autoencoder"]["height"] = "32"
    elif mutate == "strides_int":
        cfg["autoencoder"]["strides"] = 2
    else:
        cfg["autoencoder"] = []
    dst = rewrite(ckpt_path, tmp_path / "typed.safetensors", meta={"config": json.dumps(cfg)})
    rejects(dst, "bad metadata")


# ---------------------------------------------------------------------------------------------------------------
# load_into
# ---------------------------------------------------------------------------------------------------------------
def test_load_into_shape_mismatch(ckpt_path):
    ck = load_checkpoint(ckpt_path)
    bigger = WorldModel(tiny_config(d_model=64).world_model)
    with pytest.raises(CheckpointError) as info:
        load_into(bigger, ck, "wm")
    msg = str(info.value)
    assert str(ckpt_path) in msg and "has shape" in msg and "(32," in msg and "(64," in msg, msg


def test_load_into_wrong_layout(ckpt_path):
    ck = load_checkpoint(ckpt_path)
    deeper = WorldModel(tiny_config(backbone_layers=3).world_model)
    with pytest.raises(CheckpointError, match=r"do not fit the model: missing \['backbone\.blocks\.2\."):
        load_into(deeper, ck, "wm")
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_into(Autoencoder(ck.config.autoencoder), ck, "wm")  # the wrong part for this module


def test_load_into_absent_part(tmp_path, models):
    path = write(tmp_path / "ae.safetensors", models, parts=("ae",))
    ck = load_checkpoint(path)
    with pytest.raises(CheckpointError) as info:
        load_into(WorldModel(ck.config.world_model), ck, "wm")
    msg = str(info.value)
    assert str(path) in msg and "holds no 'wm' weights" in msg and "['ae']" in msg, msg


def test_save_rejects_unknown_part(tmp_path, models):
    with pytest.raises(ValueError, match="unknown checkpoint part 'optimizer'"):
        save_checkpoint(tmp_path / "x.safetensors", kind="x", config=tiny_config(), action_spec=SPEC,
                        parts={"optimizer": {"w": torch.zeros(1)}})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------
def test_interrupted_save_leaves_old_file_and_no_partial(tmp_path, ckpt_path, models, monkeypatch):
    import engine.checkpoint as checkpoint_module

    before = ckpt_path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 1000)  # some bytes reach the disk, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", half_written)
    with pytest.raises(OSError, match="No space left"):
        write(ckpt_path, models, metrics={"loss": 0.1})
    assert ckpt_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert load_checkpoint(ckpt_path).metrics == {"loss": 0.5}


def test_failed_rename_leaves_old_file(tmp_path, ckpt_path, models, monkeypatch):
    before = ckpt_path.read_bytes()

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        write(ckpt_path, models, metrics={"loss": 0.1})
    monkeypatch.undo()
    assert ckpt_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_new_file_is_not_visible_until_whole(tmp_path, models, monkeypatch):
    import engine.checkpoint as checkpoint_module

    target = tmp_path / "sub" / "new.safetensors"
    real_save = checkpoint_module.save_file
    seen = {}

    def spy(tensors, filename, metadata=None):
        seen["tmp"] = Path(filename)
        seen["target_exists_while_writing"] = target.exists()
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", spy)
    write(target, models)
    assert seen["tmp"].parent == target.parent and seen["tmp"] != target
    assert not seen["target_exists_while_writing"] and not seen["tmp"].exists()
    assert load_checkpoint(target).has("wm")


# ---------------------------------------------------------------------------------------------------------------
# The CLI: a bad --model is one clear line and exit code 1
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "d"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "1", "--steps",
                             "12", "--size", "64", "--out", str(out), "--seed", "1", "--no-progress"]) == 0
    return out


def test_eval_cli_rejects_junk_model_without_traceback(tmp_path, recorded):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "reverie_cli", "eval", "--model", str(junk), "--data", str(recorded),
                           "--json", str(tmp_path / "out.json"), "--threads", "1"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out, out
    assert str(junk) in out and "reverie eval: error:" in out, out
    assert not (tmp_path / "out.json").exists()


def eval_cli(capsys, model: Path, data: Path, tmp_path: Path) -> str:
    capsys.readouterr()
    rc = reverie_cli.main(["eval", "--model", str(model), "--data", str(data), "--json", str(tmp_path / "o.json"),
                           "--horizon", "2", "--threads", "1", "--idm-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "reverie eval: error:" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.json").exists()
    return err


def test_eval_cli_missing_model_and_folder(tmp_path, recorded, capsys):
    assert "no such checkpoint file" in eval_cli(capsys, tmp_path / "missing.safetensors", recorded, tmp_path)
    assert "is a folder" in eval_cli(capsys, tmp_path, recorded, tmp_path)


def test_eval_cli_autoencoder_only_checkpoint(tmp_path, recorded, models, capsys):
    spec = EpisodeSource(recorded).spec
    path = write(tmp_path / "ae.safetensors", models, parts=("ae",), spec=spec)
    err = eval_cli(capsys, path, recorded, tmp_path)
    assert str(path) in err and "without world-model weights" in err, err


def test_eval_cli_model_of_another_game(tmp_path, recorded, models, capsys):
    path = write(tmp_path / "m.safetensors", models)  # game 'test'
    err = eval_cli(capsys, path, recorded, tmp_path)
    assert "'test'" in err and "builtin:gems" in err, err


def test_eval_cli_model_of_another_frame_size(tmp_path, recorded, models, capsys):
    spec = EpisodeSource(recorded).spec
    path = write(tmp_path / "m.safetensors", models, spec=spec)  # 32x32 model, 64x64 episodes
    err = eval_cli(capsys, path, recorded, tmp_path)
    assert "32, 32" in err and "64, 64" in err, err


def test_train_wm_cli_rejects_junk_autoencoder(tmp_path, recorded, capsys):
    junk = tmp_path / "ae.safetensors"
    junk.write_bytes(os.urandom(100))
    capsys.readouterr()
    rc = reverie_cli.main(["train", "wm", "--data", str(recorded), "--ae", str(junk), "--out", str(tmp_path / "r"),
                           "--steps", "1", "--batch", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "reverie train wm: error:" in err and str(junk) in err, err
