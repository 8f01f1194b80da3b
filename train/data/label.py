"""Fill in the actions of episodes recorded without inputs, with an inverse-dynamics model (IDM).

The recipe of VPT (Baker et al. 2022) and Dreamer 4 (Hafner et al. 2025): train an IDM on a small set of episodes
of the same game that have their inputs ('reverie train idm --data LABELED'), let it read the action between each
pair of consecutive frames of the episodes that have none, and train the world model on all of them.

    reverie data label DIR --idm CKPT --out OUT [--all] [--batch 256] [--threads 2] [--device cpu]

Which episodes: those whose metadata says {"labels": "none"} (what 'reverie data import --no-inputs' writes). With
--all every episode is labeled, its own actions replaced. Episodes left out are not copied (a line says how many);
to train on both, put the labeled copies and the episodes that have inputs in one folder.

What is written: OUT/<same file name>, a copy with the IDM's actions and, per action, its confidence (episode format
version 2), and metadata {"labels": "idm", "idm": CKPT, "mean_confidence": x} over the episode's own. Inputs are
never modified; each file is written under a temporary name and renamed when whole, and every check (the checkpoint,
the action spec, the frame size, the output names) is made before the first file is written. --idm takes the
idm.safetensors of 'reverie train idm', a model.safetensors with a bundled IDM ('reverie train wm --idm'), or the run
folder of either.

Confidence: the probability the IDM gives to the action it chose. It reads each button as an independent Bernoulli
(sigmoid), so the chosen set of buttons has probability prod_b max(p_b, 1 - p_b): 1 when it is sure of every button,
0.5^buttons at worst. Axes are regressed without a spread and count as sure. It is the model's own belief, not a
calibrated probability: wrong labels get lower confidence on average, but an IDM trained on few episodes is sure of
many wrong ones (experiments/label_fraction.py reports accuracy and confidence side by side). 'reverie train wm
--set min_label_confidence=X' trains only on windows whose every action is at least X.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.actions import ActionSpec
from engine.autoencoder import frames_to_tensor
from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from engine.errors import ReverieError
from engine.knobs import arg_type, check_device, check_threads
from engine.output import check_count
from train.data.episodes import SUFFIX, Episode, EpisodeWriter

HELP = "fill in the actions of unlabeled episodes with an inverse-dynamics model"
UNLABELED = "none"             # metadata "labels" of episodes recorded without inputs
LABELED_BY_IDM = "idm"         # metadata "labels" of the copies written here
MAX_BATCH = 65536              # frame pairs per IDM call: a typo guard
LOW_CONFIDENCE = 0.5           # the summary line counts the labels under this


class LabelError(ReverieError, ValueError):
    """A labeling request that cannot be carried out (no episodes to label, a clash of files or specs)."""


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie data label`."""
    p.add_argument("path", type=Path, help=f"folder of *{SUFFIX} files, or one file")
    p.add_argument("--idm", required=True,
                   help="inverse-dynamics checkpoint: idm.safetensors of 'reverie train idm', a model.safetensors "
                        "with a bundled IDM, or the run folder of either")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the labeled copies (created; never the input folder)")
    p.add_argument("--all", action="store_true",
                   help='label every episode, replacing its actions (default: only those marked {"labels": "none"})')
    p.add_argument("--overwrite", action="store_true", help="replace files of the same name in --out")
    p.add_argument("--batch", type=arg_type(check_count(1, MAX_BATCH), "--batch", int), default=256,
                   help="frame pairs per IDM call (default 256)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2,
                   help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------------------------
# The labels and their confidence
# ---------------------------------------------------------------------------------------------------------------
def button_set_confidence(button_logits: torch.Tensor) -> torch.Tensor:
    """(B, n) button logits -> (B,) probability of the chosen multi-hot set, prod_b max(p_b, 1 - p_b).

    max(p, 1 - p) = sigmoid(|logit|); summed as logs, so many sure buttons do not round to 0."""
    return torch.exp(F.logsigmoid(button_logits.float().abs()).sum(dim=1))


@torch.no_grad()
def label_pairs(idm: torch.nn.Module, before: torch.Tensor, after: torch.Tensor,
                n_buttons: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (B, H, W, 3) -> the IDM's actions (B, A) (as engine.inverse_dynamics.predict reads them) and their
    confidence
    (B,) in [0, 1]."""
    logits = idm(frames_to_tensor(before), frames_to_tensor(after)).float()  # (B, A)
    actions = torch.tanh(logits)
    actions[:, :n_buttons] = (logits[:, :n_buttons] > 0).float()
    return actions, button_set_confidence(logits[:, :n_buttons])


def label_episode(ep: Episode, idm: torch.nn.Module, device: torch.device, batch: int,
                  bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """The IDM's actions (T, A) float32 and confidence (T,) float32 for every frame pair of an episode."""
    n, nb = ep.num_actions, len(ep.spec.buttons)
    actions = np.empty((n, ep.spec.size), np.float32)
    confidence = np.empty(n, np.float32)
    for i in range(0, n, batch):
        j = min(n, i + batch)
        frames = torch.from_numpy(ep.frames(i, j + 1)).to(device)                # (j - i + 1, H, W, 3)
        a, c = label_pairs(idm, frames[:-1], frames[1:], nb)
        actions[i:j], confidence[i:j] = a.cpu().numpy(), c.cpu().numpy()
        bar.update(j - i)
    return actions, confidence


def write_labeled(ep: Episode, path: Path, actions: np.ndarray, confidence: np.ndarray, idm_path: Path) -> None:
    """A copy of `ep` at `path` with these actions and their confidence (frames, header, chunking, and each step's
    reward and end where the episode has them, kept)."""
    h = ep.header
    rewards, ends = (ep.rewards(), ep.ends()) if ep.has_reward else (None, None)
    mean = float(confidence.mean()) if len(confidence) else None
    meta = {**ep.metadata, "labels": LABELED_BY_IDM, "idm": str(idm_path), "mean_confidence": mean}
    with EpisodeWriter(path, env_id=ep.env_id, env_version=h.get("env_version") or "", action_spec=ep.spec,
                       frame_shape=ep.frame_shape, fps=ep.fps or 30.0, seed=h.get("seed"), agent=h.get("agent") or "",
                       metadata=meta, chunk_frames=ep.chunk_frames, compression=ep.compression,
                       confidence=True, reward=ep.has_reward) as w:
        for i in range(0, len(ep), ep.chunk_frames):
            j = min(len(ep), i + ep.chunk_frames)
            lo = max(i, 1)  # frame 0 takes no action
            w.extend(ep.frames(i, j), actions[lo - 1:j - 1], confidence[lo - 1:j - 1],
                     None if rewards is None else rewards[lo - 1:j - 1], None if ends is None else ends[lo - 1:j - 1])


# ---------------------------------------------------------------------------------------------------------------
# Checks, all made before the first file is written
# ---------------------------------------------------------------------------------------------------------------
def episode_paths(path: Path) -> list[Path]:
    """The episode files of a folder (sorted) or the one file given; a LabelError when there are none."""
    if not path.exists():
        raise LabelError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*" + SUFFIX))
        if not files:
            raise LabelError(f"{path}: no *{SUFFIX} episode files in this folder")
        return files
    return [path]


def load_idm_checkpoint(value: str) -> tuple[Checkpoint, Path]:
    """The checkpoint `--idm` names (a file or a run folder), which must hold an 'idm' part."""
    p = Path(value)
    if p.is_dir():
        found = [p / n for n in ("idm.safetensors", "model.safetensors") if (p / n).is_file()]
        if not found:
            raise CheckpointError(f"--idm {value}: a folder without idm.safetensors or model.safetensors; pass the "
                                  "checkpoint that 'reverie train idm' wrote (has that run finished?)")
        p = found[0]
    elif not p.is_file():
        raise CheckpointError(f"--idm {value}: no such checkpoint file; pass the idm.safetensors that "
                              "'reverie train idm' wrote, or its run folder")
    try:
        ckpt = load_checkpoint(p)
    except CheckpointError as e:
        raise CheckpointError(f"--idm: {e}") from None
    if not ckpt.has("idm"):
        raise CheckpointError(f"--idm {value}: {p} holds no inverse-dynamics model (a {ckpt.kind!r} checkpoint with "
                              f"{sorted(ckpt.tensors)}); pass the idm.safetensors of 'reverie train idm', or a model "
                              "trained with 'reverie train wm --idm'")
    return ckpt, p.resolve()


def _spec_text(spec: ActionSpec) -> str:
    axes = f", axes {list(spec.axes)}" if spec.axes else ""
    return f"{spec.game} v{spec.version}: buttons {list(spec.buttons)}{axes}"


def select_episodes(files: list[Path], ckpt: Checkpoint, relabel_all: bool) -> tuple[list[tuple[Path, int]], int]:
    """(file, actions) of the episodes to label, and how many were left out; every one of them must fit the IDM."""
    trained_shape = ckpt.data.get("frame_shape")
    chosen, skipped = [], 0
    for path in files:
        with Episode(path) as ep:
            if not (relabel_all or ep.metadata.get("labels") == UNLABELED):
                skipped += 1
                continue
            if not ckpt.action_spec.compatible(ep.spec):
                raise LabelError(f"{path}: its action spec ({_spec_text(ep.spec)}) is not the IDM's (--idm "
                                 f"{ckpt.path}: {_spec_text(ckpt.action_spec)}); label with an IDM trained on "
                                 f"{ep.spec.game} episodes")
            if trained_shape and list(ep.frame_shape) != list(trained_shape):
                raise LabelError(f"{path}: frames are {list(ep.frame_shape)}, but the IDM (--idm {ckpt.path}) was "
                                 f"trained on {list(trained_shape)} frames; train it on episodes of this frame size")
            chosen.append((path, ep.num_actions))
    return chosen, skipped


def check_out(out: Path, source: Path, names: list[str], overwrite: bool) -> None:
    """`--out` is not the input folder, not a file, and (without --overwrite) holds none of the names."""
    folder = source if source.is_dir() else source.parent
    if out.exists() and not out.is_dir():
        raise LabelError(f"--out {out}: a file, not a folder; pick a folder")
    if out.resolve() == folder.resolve():
        raise LabelError(f"--out {out}: the input folder; labeling never modifies its input, so pick another "
                         "folder")
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise LabelError(f"--out {out}: {len(taken)} of the files to write already exist (e.g. {taken[0]}); pass "
                         "--overwrite to replace them, or pick another --out")


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Label the chosen episodes of `path` into `--out`; print a summary."""
    device = check_device(args.device, "--device")
    files = episode_paths(args.path)
    ckpt, idm_path = load_idm_checkpoint(args.idm)
    chosen, skipped = select_episodes(files, ckpt, args.all)
    if not chosen:
        raise LabelError(f"{args.path}: no unlabeled episodes: all {len(files)} carry labels (their metadata has no "
                         f'"labels": "{UNLABELED}"); pass --all to relabel them')
    check_out(args.out, args.path, [p.name for p, _ in chosen], args.overwrite)
    if skipped:
        print(f"skipping {skipped} episode(s) that already carry labels (pass --all to relabel them)")
    torch.set_num_threads(args.threads)
    from engine.inverse_dynamics import load_idm

    idm = load_idm(ckpt).to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    total = sum(n for _, n in chosen)
    sums, low = 0.0, 0
    with tqdm(total=total, desc="label", unit="frame", disable=args.no_progress, dynamic_ncols=True) as bar:
        for path, _ in chosen:
            with Episode(path) as ep:
                actions, confidence = label_episode(ep, idm, device, args.batch, bar)
                write_labeled(ep, args.out / path.name, actions, confidence, idm_path)
            sums += float(confidence.sum(dtype=np.float64))
            low += int((confidence < LOW_CONFIDENCE).sum())
    mean = sums / total if total else float("nan")
    print(f"labeled {len(chosen)} episode(s), {total} actions, into {args.out}: mean confidence {mean:.3f}, "
          f"{low} actions ({100 * low / max(total, 1):.1f}%) under {LOW_CONFIDENCE}")
    return 0
