"""`reverie train merge` (train/training/merge.py): a weighted average of fine-tunes' world-model weights (the
default since 2026-12-03), and task vectors added in chosen weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from cli_main import cli

from engine.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def merge(out, *specs) -> int:
    """`reverie train merge --out OUT SPECS...`, in this process."""
    return cli("train", "merge", "--out", out, *specs)

SHIPPED = REPO / "engine" / "assets" / "default.safetensors"


def shifted(path: Path, by: float) -> Path:
    """The shipped model with every world-model weight moved by `by`: a stand-in for a fine-tune of it."""
    ck = load_checkpoint(SHIPPED)
    wm = {k: v + by if v.is_floating_point() else v for k, v in ck.tensors["wm"].items()}
    save_checkpoint(path, kind=ck.kind, config=ck.config, action_spec=ck.action_spec, parts={**ck.tensors, "wm": wm},
                    data=ck.data, metrics=ck.metrics, extra=ck.extra)
    return path


def test_the_average_is_weighted_and_keeps_the_first_models_parts_and_defaults(tmp_path, capsys):
    ft = shifted(tmp_path / "ft.safetensors", 0.5)
    out = tmp_path / "soup.safetensors"
    assert merge(out, f"{SHIPPED}:0.75", f"{ft}:0.25") == 0
    soup, base = load_checkpoint(out), load_checkpoint(SHIPPED)
    k = "backbone.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(soup.tensors["wm"][k], (base.tensors["wm"][k] + 0.125).half().float())
    assert all(torch.equal(v, base.tensors["ae"][k]) for k, v in soup.tensors["ae"].items())   # the first's encoder
    mine, theirs = soup.config.world_model, base.config.world_model
    assert (mine.sampling_steps, mine.guidance) == (theirs.sampling_steps, theirs.guidance)
    assert soup.extra["averaged_from"] == [{"model": str(SHIPPED), "weight": 0.75}, {"model": str(ft), "weight": 0.25}]


def test_bad_recipes_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "soup.safetensors"
    other = load_checkpoint(SHIPPED)
    cfg = dataclasses.replace(other.config, world_model=dataclasses.replace(other.config.world_model, d_model=96))
    small = {"wm": {k: torch.zeros(1) for k in other.tensors["wm"]}, "ae": other.tensors["ae"]}
    save_checkpoint(tmp_path / "other.safetensors", kind=other.kind, config=cfg, action_spec=other.action_spec,
                    parts=small)
    cases = {
        "sum": ([f"{SHIPPED}:0.5", f"{SHIPPED}:0.6"], "sum to 1"),
        "form": ([f"{SHIPPED}", f"{SHIPPED}:0.5"], "PATH:WEIGHT"),
        "one": ([f"{SHIPPED}:1"], "two models"),
        "shapes": ([f"{SHIPPED}:0.5", f"{tmp_path / 'other.safetensors'}:0.5"], "names and shapes"),
    }
    for name, (specs, want) in cases.items():
        capsys.readouterr()
        assert merge(out, *specs) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], (name, err)
        assert not out.exists(), name


def test_a_task_vector_adds_two_fine_tunes_difference_to_the_chosen_parts_only(tmp_path):
    """--add FINETUNE BASE SCALE adds SCALE x (FINETUNE - BASE) to the average, in the backbone only with --parts
    backbone (how the default's own-rollout vector is applied); the head keeps the average, the recipe is recorded."""
    ft, base = shifted(tmp_path / "ft.safetensors", 0.5), shifted(tmp_path / "base.safetensors", 0.25)
    out = tmp_path / "tv.safetensors"
    assert merge(out, f"{SHIPPED}:1", "--add", str(ft), str(base), "2", "--parts", "backbone") == 0
    got, start = load_checkpoint(out).tensors["wm"], load_checkpoint(SHIPPED).tensors["wm"]
    kb, kh = "backbone.blocks.0.attn.qkv.weight", "head.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(got[kb], (start[kb].float() + 0.5).half().float())
    torch.testing.assert_close(got[kh], start[kh].float())
    assert load_checkpoint(out).extra["added"] == [{"finetune": str(ft), "base": str(base), "scale": 2.0,
                                                    "parts": "backbone"}]
    # name prefixes: the first backbone block alone (a prefix stops at a dot)
    assert merge(out, f"{SHIPPED}:1", "--add", str(ft), str(base), "1", "--parts", "backbone.blocks.0") == 0
    got = load_checkpoint(out).tensors["wm"]
    torch.testing.assert_close(got[kb], (start[kb].float() + 0.25).half().float())
    k1 = "backbone.blocks.1.attn.qkv.weight"
    torch.testing.assert_close(got[k1], start[k1].float())
    # with an average: the soup and the difference, every part
    assert merge(out, f"{SHIPPED}:0.5", f"{ft}:0.5", "--add", str(ft), str(base), "-1") == 0
    torch.testing.assert_close(load_checkpoint(out).tensors["wm"][kh], (start[kh].float() + 0.25 - 0.25).half().float(),
                               atol=2e-3, rtol=0)


def test_bad_task_vectors_are_one_line_and_write_nothing(tmp_path, capsys):
    ft = shifted(tmp_path / "ft.safetensors", 0.5)
    out = tmp_path / "tv.safetensors"
    cases = {
        "scale": (["--add", str(ft), str(SHIPPED), "x"], "must be a number"),
        "zero": (["--add", str(ft), str(SHIPPED), "0"], "other than 0"),
        "parts": (["--add", str(ft), str(SHIPPED), "1", "--parts", "neck"], "--parts 'neck'"),
        "prefix": (["--add", str(ft), str(SHIPPED), "1", "--parts", "backbone.block"], "names no world-model weight"),
        "alone": (["--parts", "head"], "without --add"),
    }
    for name, (extra, want) in cases.items():
        capsys.readouterr()
        specs = [f"{SHIPPED}:1"] if name != "alone" else [f"{SHIPPED}:0.5", f"{ft}:0.5"]
        assert merge(out, *specs, *extra) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], (name, err)
        assert not out.exists(), name


def test_the_shipped_default_plays_at_the_settings_its_eval_measured():
    """The shipped default is a soup plus a task vector whose run-time defaults (what play, bench and eval use unless
    told) are the ones its recorded eval ran at, 1 step and guidance 1.75 as in the README's tables: a soup whose first
    model was a fine-tune that kept guidance 1.0 would play as another model than the one measured. Its file holds
    float16."""
    from safetensors import safe_open

    ck = load_checkpoint(SHIPPED)
    wm, ran = ck.config.world_model, ck.metrics["eval"]
    assert (wm.sampling_steps, wm.guidance, wm.context_noise) == (1, 1.75, 0.05)
    assert (ran["steps"], ran["guidance"], ran["context_noise"]) == (1, 1.75, 0.05)
    weights = [w["weight"] for w in ck.extra["averaged_from"]]
    assert len(weights) == 2 and abs(sum(weights) - 1) < 1e-9
    added = ck.extra["added"]   # the own-rollout vector, in the backbone's input layers and first three blocks only
    assert len(added) == 1 and added[0]["scale"] == 1.0
    assert all(p.startswith("backbone.") for p in added[0]["parts"].split(","))
    assert ran["psnr_mean"] > 22 and ran["psnr_step1"] > 28  # the 16-frame bars, on the recipe's held-out set A
    with safe_open(str(SHIPPED), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys() if k.startswith("wm.")}
    assert dtypes == {"F16"}, dtypes
