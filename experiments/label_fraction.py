"""Label 90% of the episodes with an inverse-dynamics model trained on the other 10% (the VPT / Dreamer 4 recipe), and
measure what that costs (builtin:gems).

    python experiments/label_fraction.py [--episodes 40] [--steps 500] [--fraction 0.1] [--idm-steps 600]
        [--ae-steps 2000 | --ae FILE] [--wm-steps 3000] [--init-wm MODEL] [--heldout 8]
        [--horizon 16] [--labels-only] [--jobs 2 --threads 1] [--work DIR] [--json OUT]

1. Record --episodes episodes with the scripted agent (seeds 0..) and --heldout more (seeds 100000..) for eval.
2. Keep the true actions of the first --fraction of them (at least one episode) and train an IDM on those alone
   ('reverie train idm'); strip the actions from the rest (zero actions, {"labels": "none"}, as an import without
   inputs writes them) and label them with 'reverie data label'.
3. (a) Label accuracy against the true actions: the whole key set exactly and each button, beside the chance level
   (always answering the commonest key set) and the mean confidence of right and wrong labels.
4. (b) Unless --labels-only: one autoencoder on every training frame (it reads no actions; or --ae), then world
   models at the same budget (--wm-steps, --wm-batch): on the relabeled data (the kept episodes with their own
   actions plus the IDM-labeled rest), on the fully labeled data and on the kept episodes alone (and, with
   --min-label-confidence X, on the relabeled data trained with that threshold). The 2026-12 runs also trained an
   arm with `train wm --unsure-actions weight`, an option that was not adopted (docs/research/label-fraction.md).
   From scratch by default; with --init-wm MODEL each starts from MODEL's world model with its action inputs at
   zero ('reverie train wm --init MODEL --set fresh_actions=true'): the Dreamer 4 setting, where a model that already
   knows the game's frames learns from the labels what the actions do, at a budget a CPU can afford. Each is scored by
   'reverie eval' on the held-out episodes; action following is read by one judge IDM trained on the fully labeled data
   (--judge-steps), the same instrument for every model, and reported also as a share of the fully labeled model's.

Every step leaves its output in --work and is skipped when run again with the same --work (a long run can be
resumed; the training commands resume their own runs). Writes JSON (default docs/research/results/
label_fraction_<date>.json, or _labels_ with --labels-only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import reverie_cli
from engine.errors import ReverieError
from engine.knobs import arg_type, check_threads
from engine.output import check_count, prepare_output, write_json
from train.data.episodes import SUFFIX, Episode, EpisodeWriter

ENV_ID = "builtin:gems"
HELDOUT_SEED = 100_000          # held-out episodes are seeds HELDOUT_SEED.., far from the training seeds 0..
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "research" / "results"
SURE = 0.5                      # the report also gives the share and accuracy of labels at least this confident


def reverie(*argv: str) -> None:
    """Run one `reverie` command in this process; a ReverieError if it fails."""
    print(f"$ reverie {' '.join(argv)}", flush=True)
    rc = reverie_cli.main(list(argv))
    if rc != 0:
        raise ReverieError(f"'reverie {' '.join(argv)}' failed (exit {rc})")


def run_chains(chains: list[list[list[str]]], jobs: int, threads: int, logs: Path) -> None:
    """Run chains of `reverie` commands; the commands of a chain in order, up to `jobs` chains at a time.

    jobs 1: every command in this process, one after another. jobs > 1: each command in a child process with its
    output in logs/<chain index>.log (two trainings on a 2-core machine: --jobs 2 --threads 1). The first failure
    is raised once every running chain has ended."""
    chains = [c for c in chains if c]
    if jobs <= 1 or len(chains) <= 1:
        for chain in chains:
            for argv in chain:
                reverie(*argv)
        return
    logs.mkdir(parents=True, exist_ok=True)

    def run(i: int, chain: list[list[str]]) -> None:
        log = logs / f"chain{i}.log"
        with open(log, "a") as f:
            for argv in chain:
                print(f"$ reverie {' '.join(argv)}  (output: {log})", flush=True)
                f.write(f"$ reverie {' '.join(argv)}\n")
                f.flush()
                rc = subprocess.run([sys.executable, "-m", "reverie_cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
                if rc != 0:
                    raise ReverieError(f"'reverie {' '.join(argv)}' failed (exit {rc}); its output: {log}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run, i, chain) for i, chain in enumerate(chains)]
    for f in futures:
        f.result()


def episodes(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


def record(out: Path, n: int, steps: int, seed: int, workers: int) -> list[Path]:
    """n scripted builtin:gems episodes of at most `steps` actions into out (kept if already there)."""
    if len(episodes(out)) != n:
        reverie("record", "--env", ENV_ID, "--agent", "scripted", "--episodes", str(n), "--steps", str(steps),
                "--size", "64", "--out", str(out), "--seed", str(seed), "--workers", str(workers), "--no-progress",
                "--overwrite")
    return episodes(out)


def strip_labels(files: list[Path], out: Path) -> None:
    """Copies without actions, marked {"labels": "none"} (what 'reverie data import --no-inputs' writes)."""
    out.mkdir(parents=True, exist_ok=True)
    for p in files:
        if (out / p.name).exists():
            continue
        with Episode(p) as ep, EpisodeWriter(out / p.name, env_id=ep.env_id, env_version=ep.header["env_version"],
                                             action_spec=ep.spec, frame_shape=ep.frame_shape, fps=ep.fps,
                                             seed=ep.header["seed"], agent=ep.header["agent"],
                                             chunk_frames=ep.chunk_frames, compression=ep.compression,
                                             metadata={**ep.metadata, "labels": "none"}) as w:
            w.extend(ep.frames(), np.zeros((ep.num_actions, ep.spec.size), np.float32))


def copy_into(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for p in files:
        if not (out / p.name).exists():
            shutil.copy2(p, out / p.name)


def label_accuracy(labeled: Path, truth: Path) -> dict:
    """The IDM's labels in `labeled` against the true actions of the same files in `truth`."""
    pred, true, conf = [], [], []
    for p in episodes(labeled):
        with Episode(p) as a, Episode(truth / p.name) as b:
            pred.append(a.actions())
            true.append(b.actions())
            conf.append(a.confidence())
    pred, true, conf = np.concatenate(pred), np.concatenate(true), np.concatenate(conf)   # (N, A), (N, A), (N,)
    with Episode(episodes(labeled)[0]) as ep:
        buttons = list(ep.spec.buttons)
    nb = len(buttons)
    right = (pred[:, :nb] == true[:, :nb]).all(axis=1)
    _, counts = np.unique(true[:, :nb], axis=0, return_counts=True)
    sure = conf >= SURE
    return {"actions": int(len(true)), "exact_keys": float(right.mean()), "chance": float(counts.max() / len(true)),
            "per_button": {b: float((pred[:, i] == true[:, i]).mean()) for i, b in enumerate(buttons)},
            "mean_confidence": float(conf.mean()),
            "mean_confidence_right": float(conf[right].mean()) if right.any() else None,
            "mean_confidence_wrong": float(conf[~right].mean()) if (~right).any() else None,
            f"share_confidence_at_least_{SURE}": float(sure.mean()),
            f"exact_keys_confidence_at_least_{SURE}": float(right[sure].mean()) if sure.any() else None}


def train_flags(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--device", args.device, "--set", f"seed={args.seed}"]


def world_model_chain(args: argparse.Namespace, name: str, data: Path, ae: Path, extra: list[str]) -> list[list[str]]:
    """The commands that train a world model on `data` at the benchmark's budget and score it on the held-out
    episodes (none when its report is already there)."""
    run, report = args.work / name, args.work / f"eval_{name}.json"
    if report.exists():
        return []
    budget = ["--steps", str(args.wm_steps), "--batch", str(args.wm_batch)]
    if args.wm_time_limit:
        budget += ["--time-limit", str(args.wm_time_limit)]
    if args.wm_lr:
        budget += ["--lr", str(args.wm_lr)]
    if args.init_wm:
        budget += init_flags(args.init_wm)
    return [["train", "wm", "--data", str(data), "--ae", str(ae), "--out", str(run), *budget, *train_flags(args),
             *extra],
            ["eval", "--model", str(run / "model.safetensors"), "--data", str(args.work / "heldout"),
             "--horizon", str(args.horizon), "--idm", str(args.work / "judge" / "idm.safetensors"), "--json",
             str(report), "--threads", str(args.threads), "--device", args.device, "--no-progress"]]


def init_flags(model: Path) -> list[str]:
    """The flags that start a world model from `model`'s with fresh action inputs, keeping its backbone's way with
    actions (for the default model: the head alone reads them) rather than the preset's."""
    from engine.checkpoint import load_checkpoint

    ck = load_checkpoint(model)
    if not ck.has("wm"):
        raise ReverieError(f"--init-wm {model}: holds no world model to start from")
    on = ck.config.world_model.backbone_actions
    return ["--init", str(model), "--set", "fresh_actions=true", "--set", f"backbone_actions={str(on).lower()}"]


def world_model_result(args: argparse.Namespace, name: str, data: Path, extra: list[str]) -> dict:
    report = args.work / f"eval_{name}.json"
    result = json.loads(report.read_text())
    af = result.get("action_following", {})
    return {"data": str(data), "flags": extra, "action_following_ratio": af.get("ratio"),
            "action_following": {k: af.get(k) for k in ("available", "generated", "real", "ratio", "chance",
                                                         "ratio_by_effect")},
            "psnr_mean": result.get("psnr_mean"), "psnr_step1": result.get("psnr_step1"),
            "ssim_mean": result.get("ssim_mean"), "eval_json": str(report)}


def main(argv: list[str] | None = None) -> int:
    count = arg_type(check_count(1), "count", int)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=count, default=40, help="training episodes recorded (default 40)")
    p.add_argument("--steps", type=count, default=500, help="actions per episode at most (default 500)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of episodes that keep their labels (0.1)")
    p.add_argument("--heldout", type=count, default=8, help="held-out episodes for eval (default 8)")
    p.add_argument("--idm-steps", type=count, default=600, help="steps of the labeling IDM (default 600)")
    p.add_argument("--idm-batch", type=count, default=64, help="batch of the labeling IDM (default 64)")
    p.add_argument("--judge-steps", type=count, default=600,
                   help="steps of eval's judge IDM, trained on the fully labeled data (default 600)")
    p.add_argument("--ae-steps", type=count, default=2000, help="autoencoder steps (default 2000)")
    p.add_argument("--ae", type=Path, default=None,
                   help="use this builtin:gems autoencoder instead of training one: an ae.safetensors, or a model file "
                        "(its bundled one, e.g. engine/assets/default.safetensors); it reads no actions, so every "
                        "world model shares it whichever labels they train on")
    p.add_argument("--wm-steps", type=count, default=3000, help="world-model steps, the same for each (default 3000)")
    p.add_argument("--wm-batch", type=count, default=8, help="world-model batch (default 8)")
    p.add_argument("--wm-lr", type=float, default=0.0, help="world-model learning rate (default: the trainer's)")
    p.add_argument("--init-wm", type=Path, default=None,
                   help="start every world model from this model's (its action inputs at zero, 'reverie train wm "
                        "--set fresh_actions=true'): a model pretrained on the game's frames that learns the actions "
                        "from each arm's labels")
    p.add_argument("--wm-time-limit", type=float, default=0.0,
                   help="also stop each world model after this many seconds (0: steps only)")
    p.add_argument("--min-label-confidence", type=float, default=None,
                   help="also train a world model on the relabeled data with this --min-label-confidence")
    p.add_argument("--horizon", type=count, default=16, help="eval horizon (default 16)")
    p.add_argument("--labels-only", action="store_true", help="measure the labels only (no world models)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda (training and eval)")
    p.add_argument("--workers", type=count, default=1, help="recording processes (default 1)")
    p.add_argument("--jobs", type=count, default=1,
                   help="trainings side by side, each a child process with --threads threads and its output in "
                        "WORK/logs (2-core machine: --jobs 2 --threads 1; default 1: one after another, here)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every model (default 0)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the data and runs (kept; re-running skips what is done; default: a temporary "
                        "folder, removed at the end)")
    p.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = p.parse_args(argv)
    temporary = args.work is None
    try:
        if args.ae is not None and not args.ae.is_file():
            raise ReverieError(f"--ae {args.ae}: no such file")
        if args.init_wm is not None and not args.init_wm.is_file():
            raise ReverieError(f"--init-wm {args.init_wm}: no such file")
        if not 0 < args.fraction < 1:
            raise ReverieError(f"--fraction must be between 0 and 1, got {args.fraction}")
        if args.min_label_confidence is not None and not 0 < args.min_label_confidence <= 1:
            raise ReverieError(f"--min-label-confidence must be in (0, 1], got {args.min_label_confidence}")
        stem = "label_fraction_labels" if args.labels_only else "label_fraction"
        out = prepare_output(args.json or RESULTS / f"{stem}_{time.strftime('%Y-%m-%d')}.json")
        args.work = Path(tempfile.mkdtemp(prefix="label-fraction-")) if temporary else args.work
        args.work.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        w, t0, times = args.work, time.perf_counter(), {}

        files = record(w / "episodes", args.episodes, args.steps, 0, args.workers)
        n_keep = max(1, round(args.fraction * len(files)))
        if n_keep >= len(files):
            raise ReverieError(f"--fraction {args.fraction} of {len(files)} episodes keeps them all; record more")
        kept, rest = files[:n_keep], files[n_keep:]
        copy_into(kept, w / "kept")
        strip_labels(rest, w / "unlabeled")
        ae, judge = args.ae or w / "ae" / "ae.safetensors", w / "judge" / "idm.safetensors"
        labeling, models = [], []     # chains: IDM -> labels (-> judge), and the autoencoder beside them
        if not (w / "idm" / "idm.safetensors").exists():
            labeling.append(["train", "idm", "--data", str(w / "kept"), "--out", str(w / "idm"), "--steps",
                             str(args.idm_steps), "--batch", str(args.idm_batch), *train_flags(args)])
        if len(episodes(w / "relabeled")) != len(rest):
            labeling.append(["data", "label", str(w / "unlabeled"), "--idm", str(w / "idm" / "idm.safetensors"),
                             "--out", str(w / "relabeled"), "--threads", str(args.threads), "--device", args.device,
                             "--overwrite", "--no-progress"])
        if not args.labels_only:
            record(w / "heldout", args.heldout, args.steps, HELDOUT_SEED, args.workers)
            if not judge.exists():
                labeling.append(["train", "idm", "--data", str(w / "episodes"), "--out", str(w / "judge"),
                                 "--steps", str(args.judge_steps), *train_flags(args)])
            if not ae.exists():
                models.append(["train", "ae", "--data", str(w / "episodes"), "--out", str(w / "ae"), "--steps",
                               str(args.ae_steps), *train_flags(args)])
        run_chains([labeling, models], args.jobs, args.threads, w / "logs")
        labels = label_accuracy(w / "relabeled", w / "episodes")
        times["labels_s"] = time.perf_counter() - t0
        print(f"labels: {labels['exact_keys']:.3f} of {labels['actions']} actions exactly right (chance "
              f"{labels['chance']:.3f}); per button "
              + ", ".join(f"{b} {v:.3f}" for b, v in labels["per_button"].items())
              + f"; mean confidence {labels['mean_confidence']:.3f} (right {labels['mean_confidence_right']}, "
              f"wrong {labels['mean_confidence_wrong']})")
        result = {"env": ENV_ID, "episodes": len(files), "labeled_episodes": n_keep, "relabeled_episodes": len(rest),
                  "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "labels": labels, "times": times}

        if not args.labels_only:
            copy_into(kept + episodes(w / "relabeled"), w / "mixed")
            # fine-tunes, models from scratch and other seeds can share one --work (seed 0 keeps the old names)
            tag = ("_ft" if args.init_wm else "") + (f"_s{args.seed}" if args.seed else "")
            runs = {"full": (f"wm_full{tag}", w / "episodes", []),
                    "relabeled": (f"wm_relabeled{tag}", w / "mixed", []),
                    "kept_only": (f"wm_kept{tag}", w / "kept", [])}
            if args.min_label_confidence is not None:
                runs["relabeled_min_confidence"] = (f"wm_relabeled_min{tag}", w / "mixed",
                                                    ["--set", f"min_label_confidence={args.min_label_confidence}"])
            run_chains([world_model_chain(args, name, data, ae, extra) for name, data, extra in runs.values()],
                       args.jobs, args.threads, w / "logs")
            wm = {key: world_model_result(args, name, data, extra) for key, (name, data, extra) in runs.items()}
            result["world_models"] = wm
            full = wm["full"]["action_following_ratio"]
            for r in wm.values():
                r["action_following_vs_full"] = (r["action_following_ratio"] / full
                                                 if full and r["action_following_ratio"] is not None else None)
            times["total_s"] = time.perf_counter() - t0
            for name, r in wm.items():
                print(f"world model on {name} data: action following ratio {r['action_following_ratio']} "
                      f"({r['action_following_vs_full']} of the fully labeled model's), psnr {r['psnr_mean']}")
        write_json(out, result)
        print(f"saved {out}")
    except ReverieError as e:
        print(f"label_fraction: error: {e}", file=sys.stderr)
        return 1
    finally:
        if temporary and args.work is not None and args.work.exists():
            shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
