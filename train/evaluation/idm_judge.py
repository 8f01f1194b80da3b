"""Action following for `reverie eval`: an inverse-dynamics model (engine.inverse_dynamics) reads the actions back from
frame pairs.

If the world model follows the actions, the IDM reads them from dream frame pairs about as well as from the real
game's pairs under the same actions. The score is reported only beside the IDM's own accuracy on real frames and the
chance level (the commonest action's share among the evaluated actions), overall, per horizon step and per time
bucket. The IDM is --idm, else the one bundled in the checkpoint, else one trained on --data for --idm-steps. When the
IDM does not read real frames clearly above chance (`judge_needs`), the ratio is null, `available` false and
`unavailable_because` says why: the ratio of two chance-level accuracies is near 1 whatever the dream does.

Where the real game ran alongside and could tell (train.evaluation.long_play: Track.effects), the same scores are
also reported by effect (`*_by_effect`): a read action counts as right when it would have done in the real game what
the taken one did (led it to the same next frame). In builtin:gems the avatar spends much of its time against a wall,
where "right" and nothing pressed give the same frame, and up + down cancel: no judge can tell those apart, so by keys
the judge reads about 0.82 of real steps and the ratio carries that noise; by effect it reads nearly all, and the
ratio measures the dream.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.autoencoder import frames_to_tensor
from engine.checkpoint import Checkpoint, load_checkpoint
from train.data.windows import EpisodeSource
from train.evaluation.long_play import Rollouts

IDM_CHUNK = 512          # frame pairs through the IDM at a time
# A judge is usable when it reads real transitions clearly above chance: by at least this share of what chance leaves
# (and at least JUDGE_MIN_LEAD in absolute terms). Below that, a ratio of two near-chance accuracies says nothing:
# an IDM that guesses reads generated and real frames equally badly, and their ratio comes out near 1.
JUDGE_LEAD_FRACTION = 0.25
JUDGE_MIN_LEAD = 0.1


def load_or_train_idm(args: argparse.Namespace, ckpt: Checkpoint, src: EpisodeSource) -> tuple[Any, str]:
    """The IDM to score with and how it was obtained."""
    from engine.inverse_dynamics import load_idm

    if args.idm:
        return load_idm(load_checkpoint(args.idm)), str(args.idm)
    if ckpt.has("idm"):
        return load_idm(ckpt), "bundled"
    return quick_idm(args, src), f"trained on --data for {args.idm_steps} steps (no IDM was given or bundled)"


def quick_idm(args: argparse.Namespace, src: EpisodeSource) -> Any:
    """Train a small IDM on the evaluation data in-process (only when none is available)."""
    from engine.inverse_dynamics import InverseDynamics, idm_loss
    from train.training.loop import step_generator

    print(f"reverie eval: no inverse-dynamics model given; training one on {args.data} for {args.idm_steps} "
          "steps (pass --idm or bundle one with 'reverie train wm --idm' for a fixed instrument)", file=sys.stderr)
    torch.manual_seed(args.seed)
    idm = InverseDynamics(src.spec.size)
    opt = torch.optim.AdamW(idm.parameters(), lr=1e-3)
    nb = len(src.spec.buttons)
    for step in range(args.idm_steps):
        win = src.sample(step_generator(args.seed + 7, step), 32, 2)
        fr = frames_to_tensor(win.frames)
        loss = idm_loss(idm(fr[:, 0], fr[:, 1]), win.actions[:, 1], nb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return idm.eval()


@torch.no_grad()
def read_actions(idm: Any, frames: np.ndarray, first: np.ndarray, pairs: np.ndarray, n_buttons: int) -> torch.Tensor:
    """The IDM's actions for frame pairs (r, t): frames[r, t - 1] (first[r] for t = 0) -> frames[r, t].
    frames (R, H, h, w, 3), first (R, h, w, 3), pairs (k, 2) -> (k, A)."""
    from engine.inverse_dynamics import predict

    out = []
    for j in range(0, len(pairs), IDM_CHUNK):
        r, t = pairs[j:j + IDM_CHUNK].T
        after = frames[r, t]                                                      # (n, h, w, 3)
        before = np.where((t == 0)[:, None, None, None], first[r], frames[r, np.maximum(t - 1, 0)])
        out.append(predict(idm, torch.from_numpy(before), torch.from_numpy(after), n_buttons))
    return torch.cat(out) if out else torch.zeros(0, 0)


def chance_level(actions: np.ndarray) -> float:
    """The commonest action's share among (N, A) actions."""
    _, counts = np.unique(actions, axis=0, return_counts=True)
    return float(counts.max() / counts.sum())


def judge_needs(chance: float) -> float:
    """The real-frame accuracy a judge needs before its ratio means anything, given the chance level."""
    return min(1.0, chance + max(JUDGE_MIN_LEAD, JUDGE_LEAD_FRACTION * (1.0 - chance)))


def judge_problem(real_accuracy: float | None, chance: float, note: str) -> str | None:
    """Why the action-following measure is unavailable for this judge and data, or None when it is usable."""
    if real_accuracy is None:
        return ("no real frame pairs to score the judge on (the real game could not be replayed beside the dream), "
                "so its accuracy, and with it the measure, is unknown")
    need = judge_needs(chance)
    if real_accuracy < need:
        return (f"the inverse-dynamics model ({note}) reads {real_accuracy:.3f} of real transitions, against a chance "
                f"level of {chance:.3f} (always guessing the commonest action); it needs at least {need:.3f} to tell "
                "a dream that follows the actions from one that does not. Train it longer on this game "
                "('reverie train idm', then pass --idm or bundle it with 'reverie train wm --idm'), or evaluate on "
                "more episodes")
    return None


def same_effect(effects: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n_buttons: int) -> torch.Tensor:
    """(R, H) bool: whether each read action `pred` (R, H, A) would have done what `target` did, by the per-step classes
    of button sets `effects` (R, H, 2^buttons) (train.evaluation.long_play.Track.effects); the axes must be within
    0.25 as in engine.inverse_dynamics.accuracy."""
    bits = 2 ** torch.arange(n_buttons)

    def code(x: torch.Tensor) -> torch.Tensor:
        return ((x[..., :n_buttons] > 0.5).long() * bits).sum(-1, keepdim=True)  # (R, H, 1)

    ok = effects.gather(-1, code(pred))[..., 0] == effects.gather(-1, code(target))[..., 0]
    if pred.shape[-1] > n_buttons:
        ok &= ((pred[..., n_buttons:] - target[..., n_buttons:]).abs() <= 0.25).all(-1)
    return ok


def action_following(idm: Any, note: str, roll: Rollouts, n_buttons: int,
                     slices: Sequence[slice]) -> tuple[dict[str, Any], list[dict[str, float | None]]]:
    """action_following (overall and per horizon step) and, per bucket, idm_accuracy_dream / idm_accuracy_real."""
    from engine.inverse_dynamics import action_accuracy

    R, H, A = roll.actions.shape
    ok_pair = roll.real_ok & np.concatenate([np.ones((R, 1), bool), roll.real_ok[:, :-1]], axis=1)  # (R, H)
    every = np.argwhere(np.ones((R, H), bool))                                   # (R*H, 2), rollout-major
    real_pairs = np.argwhere(ok_pair)
    target = torch.from_numpy(roll.actions)                                       # (R, H, A)
    dream = read_actions(idm, roll.dream, roll.last_context, every, n_buttons).reshape(R, H, A)
    real = torch.full((R, H, A), float("nan"))
    if len(real_pairs):
        real[tuple(torch.from_numpy(real_pairs).T)] = read_actions(idm, roll.real, roll.last_context, real_pairs,
                                                                   n_buttons)
    ok = torch.from_numpy(ok_pair)

    def accuracy(pred: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor | None = None) -> float | None:
        if mask is not None:
            pred, tgt = pred[mask], tgt[mask]
        pred, tgt = pred.reshape(-1, A), tgt.reshape(-1, A)
        return action_accuracy(pred, tgt, n_buttons) if len(pred) else None

    acc_gen, acc_real = accuracy(dream, target), accuracy(real, target, ok)
    chance = chance_level(roll.actions.reshape(-1, A))
    problem = judge_problem(acc_real, chance, note)
    summary = {
        "generated": acc_gen, "real": acc_real,
        "ratio": acc_gen / acc_real if problem is None and acc_gen is not None else None, "idm": note,
        "idm_real_accuracy": acc_real, "chance": chance, "judge_needs": judge_needs(chance),
        "available": problem is None, "unavailable_because": problem,
        "generated_by_step": [accuracy(dream[:, k], target[:, k]) for k in range(H)],
        "real_by_step": [accuracy(real[:, k], target[:, k], ok[:, k]) for k in range(H)],
    }
    buckets = [{"idm_accuracy_dream": accuracy(dream[:, sl], target[:, sl]),
                "idm_accuracy_real": accuracy(real[:, sl], target[:, sl], ok[:, sl])} for sl in slices]
    if roll.effects is not None and bool((roll.effects[..., 0] >= 0).any()):
        known = torch.from_numpy(roll.effects[..., 0] >= 0)                     # (R, H)
        eff = torch.from_numpy(roll.effects)                                     # (R, H, 2^buttons)
        same_dream = same_effect(eff, dream, target, n_buttons) & known
        same_real = same_effect(eff, real.nan_to_num(0.0), target, n_buttons) & known & ok

        def share(hit: torch.Tensor, mask: torch.Tensor) -> float | None:
            return float(hit[mask].float().mean()) if bool(mask.any()) else None

        gen_e, real_e = share(same_dream, known), share(same_real, known & ok)
        summary.update({"generated_by_effect": gen_e, "real_by_effect": real_e,
                        "ratio_by_effect": (gen_e / real_e if problem is None and gen_e is not None and real_e
                                            else None),
                        "by_effect_steps": float(known.float().mean())})
        for bk, sl in zip(buckets, slices):
            bk["idm_accuracy_dream_by_effect"] = share(same_dream[:, sl], known[:, sl])
            bk["idm_accuracy_real_by_effect"] = share(same_real[:, sl], (known & ok)[:, sl])
    return summary, buckets
