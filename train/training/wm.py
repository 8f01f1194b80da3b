"""`reverie train wm`: train the causal world model on latents of the recorded episodes.

The dataset is encoded by the (frozen) autoencoder once and cached in RUN/latents.cache (safetensors format), keyed by a
fingerprint of the episode files and the autoencoder, so later runs and resumes skip the encoding. Writes
RUN/model.safetensors: autoencoder + world model (+ the inverse-dynamics model when --idm is given).

Actions filled in by `reverie data label` carry the labeling model's confidence; `--min-label-confidence X` trains
only on windows whose every action is at least X sure (recorded actions count as sure), so a wrongly read action
does not teach the model that the avatar ignored it. The default, 0, trains on every window exactly as before.
`--unsure-actions weight` weighs each frame's loss by its action's confidence instead, and `--unsure-actions drop`
hides an action from the model with probability 1 - confidence (the frame still teaches the dynamics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import Checkpoint, CheckpointError, atomic_target, load_checkpoint, load_into, save_checkpoint
from engine.config import ModelConfig
from engine.world_model import ACTION_INPUTS, UNSURE_ACTIONS, WorldModel
from train.data.windows import EpisodeSource, pick_focused_windows, pick_windows
from train.games.probes import Probe, probe_games, probes_for, shared_tokens, token_masks
from train.training.config import (
    RESUMABLE,
    TrainingError,
    add_train_flags,
    checkpoint_path,
    config_from_args,
    data_path,
    init_path,
    open_episodes,
    seed_for,
    step_generator,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import RunDir, check_out

HELP = "the world model (causal backbone + diffusion head) on cached latents"
TAU_BINS = 4
# --half and --idm shape only the file written at the end, so a run may resume with them changed
WM_RESUMABLE = RESUMABLE | {"half", "idm"}


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train wm`: the shared ones, the checkpoints it builds on, and model settings."""
    add_train_flags(p, "wm")
    p.add_argument("--ae", required=True, help="autoencoder checkpoint (.safetensors from 'reverie train ae')")
    p.add_argument("--idm", help="inverse-dynamics checkpoint to bundle into the model file, for eval")
    p.add_argument("--window", type=int, default=0, help="frames per training window (default: the preset's)")
    p.add_argument("--patch", type=int, default=None,
                   help="latent cells per token side (default: the preset's, 2): 1 gives every 8x8-pixel cell a token "
                        "of its own, 4x the tokens a frame (64 for tiny), for sprites smaller than a 2x2 token; the "
                        "step costs more (2.5x as long on a 2-core CPU)")
    p.add_argument("--head-patch", type=int, default=None,
                   help="latent cells per head-token side (default: --patch): 1 under a patch-2 backbone gives the "
                        "head a token per 8x8-pixel cell (64 a frame for tiny) while the backbone keeps 16; with "
                        "--init from a coarser head, the fine head starts as exactly that head")
    p.add_argument("--init", default=None,
                   help="warm start: world-model weights from a checkpoint or a training state folder (new weights "
                        "the model has since gained start fresh); the run itself starts at step 0")
    p.add_argument("--fresh-actions", action="store_true",
                   help="with --init: the weights that read the action start from zero, the rest from --init, so the "
                        "model learns what the actions do from this data alone (actions of another spec or count, "
                        "labels to compare on one pretrained model)")
    p.add_argument("--train-only", choices=("all", "backbone", "head"), default="all",
                   help="with --init: train only this part of the world model, the other keeps --init's weights (for "
                        "example the head under a backbone that changed; default all)")
    p.add_argument("--half", action="store_true", help="store the final model's weights as float16 (half size)")
    p.add_argument("--rollout-iters", type=int, default=None,
                   help="train on the model's own rollouts against drift: Jacobi passes K (0: off; default: the "
                        "preset's)")
    p.add_argument("--rollout-fraction", type=float, default=None,
                   help="share of windows whose context is the model's own rollout (default: the preset's, 0.5)")
    p.add_argument("--change-weight", type=float, default=None,
                   help="extra loss weight on the tokens that change from the previous frame (moving sprites), "
                        "relative to the batch's mean change; 0: every token weighs the same (default: the preset's)")
    p.add_argument("--object-weight", type=float, default=None,
                   help="extra loss weight (1 + W, then scaled to mean 1) on the tokens that hold an object the "
                        "game's probes find in the frame to predict (builtin:gems: avatar, gems, enemies, score; "
                        "ale:Breakout: paddle, ball, bricks), moving or not; needs a game with probes (default: the "
                        "preset's, 0)")
    p.add_argument("--objects", default=None,
                   help="with --object-weight: which of the game's probes weigh, comma-separated (default: all)")
    p.add_argument("--focus", default=None, metavar="A,B",
                   help="two of the game's probes (builtin:gems: avatar,enemies): --focus-share of every batch's "
                        "windows are drawn from those where the two meet in one token in the window's second half "
                        "(the frames a long dream loses a sprite in); needs a game with probes")
    p.add_argument("--focus-share", type=float, default=0.5,
                   help="with --focus: the share of each batch drawn from those windows, in (0, 1] (default 0.5)")
    p.add_argument("--shortcut-decay", type=float, default=None,
                   help="self-consistency step sizes d = 1, 1/2, ..., 1/32 drawn with weight DECAY^j (1: uniform, "
                        "the preset's default; 0.5: each finer step half as often, so the 1- and 2-step sampling "
                        "that play uses gets more of the training); in (0, 1]")
    p.add_argument("--backbone-actions", choices=("on", "off"), default=None,
                   help="whether the backbone also reads the action that led to each frame (off: the head alone "
                        "reads actions; default: the preset's, on)")
    p.add_argument("--min-label-confidence", type=label_confidence, default=0.0,
                   help="train only on windows whose every action has at least this confidence, 0..1: actions "
                        "filled in by 'reverie data label' carry the inverse-dynamics model's confidence (the "
                        "probability of the button set it chose), recorded ones count as 1 (default 0: every window)")
    p.add_argument("--unsure-actions", choices=UNSURE_ACTIONS, default="keep",
                   help="how the loss treats labeled actions by their confidence: keep (as if sure; default), "
                        "weight (each frame's loss times its action's confidence), drop (the model does not see "
                        "the action, with probability 1 - confidence, as in guidance dropout)")


def object_probes(src: EpisodeSource, names: str | None, flag: str = "--object-weight",
                  names_flag: str = "--objects") -> list[Probe]:
    """The probes `--object-weight` weighs: the data's game's (all, or those `--objects` names)."""
    games = sorted(set(src.env_ids))
    if len(games) != 1 or not probes_for(games[0]):
        raise TrainingError(f"{flag}: needs data of one game that declares object probes "
                            f"({', '.join(probe_games())}); "
                            f"this data is from {', '.join(games) or 'no game'}")
    known = probes_for(games[0])
    if names is None:
        return list(known.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise TrainingError(f"{names_flag} {names!r}: {games[0]} has the probes {', '.join(known)}; name some of them"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return [known[n] for n in wanted]


def focus_windows(src: EpisodeSource, starts: list, names: str, window: int, grid: tuple[int, int],
                  progress: bool = False) -> list[np.ndarray]:
    """Per episode, the starts (of `starts`) whose window has, in its second half, a frame where the two probes
    `names` ("a,b") find pixels in one token of the `grid`; a TrainingError when the names are not two of the game's
    probes or no window qualifies."""
    probes = object_probes(src, names, flag="--focus", names_flag="--focus")
    if len(probes) != 2 or probes[0].name == probes[1].name:
        raise TrainingError(f"--focus {names!r}: name two different probes of the game, as A,B (builtin:gems: "
                            "avatar,enemies)")
    focus = []
    for e in tqdm(range(len(src.lengths)), desc="focus windows", unit="episode", disable=not progress):
        shared = shared_tokens(src.episode_frames(e), probes[0], probes[1], grid)
        csum = np.concatenate([[0], np.cumsum(shared)])
        s = np.asarray(starts[e], dtype=np.int64)
        lo, hi = s + window // 2, s + window
        focus.append(s[csum[hi] - csum[lo] > 0])
    kept, total = sum(map(len, focus)), sum(map(len, starts))
    if not kept:
        raise TrainingError(f"--focus {names!r}: {probes[0].name} and {probes[1].name} never share a token in this "
                            "data; record play where they meet, or leave --focus out")
    print(f"--focus {probes[0].name},{probes[1].name}: {kept} of {total} windows ({100 * kept / total:.1f}%) meet in "
          f"one token in their second half")
    return focus


def label_confidence(text: str) -> float:
    """`--min-label-confidence`: a number in 0..1 (argparse names the flag in its message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number in 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text!r}")
    return value


def confident_windows(src: EpisodeSource, data: str, window: int, min_confidence: float) -> list:
    """Per episode, the first frames of the windows to train on (every window when min_confidence is 0); a
    TrainingError when there is none."""
    longest = max(src.lengths)
    if longest < window:
        raise TrainingError(f"--data {data}: the longest episode has {longest} frames, fewer than the window of "
                            f"{window}; record longer episodes or pass --window")
    starts = src.window_starts(window, min_confidence)
    if min_confidence > 0:
        kept, total = sum(map(len, starts)), sum(max(0, n - window + 1) for n in src.lengths)
        if not kept:
            raise TrainingError(f"--min-label-confidence {min_confidence}: no window of {window} frames has every "
                                "action that sure; lower it (see 'reverie data info' for the data's mean confidence)")
        print(f"--min-label-confidence {min_confidence}: training on {kept} of {total} windows "
              f"({100 * kept / total:.1f}%)")
    return starts


def warm_start(model: WorldModel, init: dict[str, torch.Tensor], path: str, assign: bool = False) -> list[str]:
    """Load `--init` weights into model (names and shapes must fit; weights the model has gained since start
    fresh); the names of those fresh weights. `assign` for a model on the meta device (a check of names and shapes)."""
    try:
        missing, unexpected = model.load_state_dict(init, strict=False, assign=assign)
    except RuntimeError as e:  # a weight of another shape (another preset, another --patch)
        c, hint = model.cfg, ""
        theirs, acts = init.get("head.out.bias"), init.get("head.action_in.weight")
        if theirs is not None and theirs.numel() != c.token_dim:
            hint = (f"; its tokens hold {theirs.numel()} latent values, this model's {c.token_dim} (--patch "
                    f"{c.patch}): train with the --patch it was trained with, or without --init")
        elif acts is not None and acts.ndim == 2 and acts.shape[1] != c.action_dim:
            hint = (f"; it reads actions of {acts.shape[1]} values, this data's have {c.action_dim}: add "
                    "--fresh-actions to learn the action inputs anew on this data")
        raise CheckpointError(f"--init {path}: its weights do not fit this model "
                              f"({str(e).strip().splitlines()[-1].strip()}){hint}") from None
    if unexpected:
        raise CheckpointError(f"--init {path}: weights that this model does not have: {unexpected[:5]}")
    return missing


def encode_dataset(src: EpisodeSource, ae: Autoencoder, device: torch.device, cache: Path,
                   fingerprint: str, batch: int = 256, progress: bool = True) -> list[torch.Tensor]:
    """Latents (T, C, h, w) float16 of every episode, from the cache when its fingerprint matches."""
    if cache.exists():
        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return [f.get_tensor(f"ep{i:06d}") for i in range(len(src.lengths))]
    out = []
    ae.eval()
    with torch.no_grad(), tqdm(total=src.num_frames, desc="encode", unit="frame", disable=not progress) as bar:
        for e in range(len(src.lengths)):
            frames = src.episode_frames(e)
            zs = []
            for i in range(0, len(frames), batch):
                x = frames_to_tensor(torch.from_numpy(frames[i:i + batch]).to(device))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    zs.append(ae.encode(x).float().cpu())
                bar.update(len(x))
            out.append(torch.cat(zs).half().contiguous())
    with atomic_target(cache) as tmp:
        save_file({f"ep{i:06d}": z.contiguous() for i, z in enumerate(out)}, str(tmp),
                  metadata={"fingerprint": fingerprint})
    return out


def fingerprint_of(src: EpisodeSource, ae_path: Path) -> str:
    """A key of the episode files and the autoencoder file (names, sizes, times): the latent cache's validity."""
    h = hashlib.sha256()
    for info in src.ds.episodes:
        st = info.path.stat()
        h.update(f"{info.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    st = ae_path.stat()
    h.update(f"{ae_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def warm_start_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """World-model weights to start from: a checkpoint's 'wm' part, or a training state's model.state (a state
    folder, or a run folder or its state/ folder, whose manifest names the newest state). With them, the
    checkpoint's run-time sampling defaults (head steps, guidance, context noise), which a fine-tune of it keeps;
    None for a training state, which has none of its own. The file is read once."""
    p = Path(path)
    if p.is_dir():
        run = RunDir(p.parent if (p / "manifest.json").is_file() else p)  # a state/ folder or its run folder
        if (run.state_root / "manifest.json").is_file():
            p = run.latest()
        p = p / "model.state"
        if not p.is_file():
            raise CheckpointError(f"{path}: a folder without a training state (no model.state, no "
                                  "state/manifest.json); pass a checkpoint, a run folder of 'reverie train wm' or "
                                  "one of its state folders")
    if p.suffix == ".state":
        from safetensors.torch import load_file

        try:
            return load_file(str(p)), None
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{p}: not a readable training state ({e})") from None
    ck = load_checkpoint(p)
    if not ck.has("wm"):
        raise CheckpointError(f"{p}: holds no world-model weights to start from")
    wm = ck.config.world_model
    return ck.tensors["wm"], {"sampling_steps": wm.sampling_steps, "guidance": wm.guidance,
                              "context_noise": wm.context_noise}


def tau_bin_stats(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flow-matching loss per tau bin (a free diagnostic of where the model struggles) + shortcut loss.

    0-d tensors on the loss's device, computed with masks rather than boolean indexing, which would wait for the
    device; a bin with no sample this step is NaN, which the training loop leaves out of its average."""
    tau, loss, sc = stats["tau"].float(), stats["loss"].float(), stats["shortcut"]
    out = {}
    for b in range(TAU_BINS):
        sel = ~sc & (tau >= b / TAU_BINS) & (tau < (b + 1) / TAU_BINS)
        out[f"loss_tau{b}"] = torch.where(sel, loss, 0.0).sum() / sel.sum()  # 0 / 0: NaN, "no sample"
    out["loss_shortcut"] = torch.where(sc, loss, 0.0).sum() / sc.sum()
    one = sc & (stats["level"] == 0)   # the step size d = 1 (level 0), the step 1-step sampling takes
    out["loss_d1"] = torch.where(one, loss, 0.0).sum() / one.sum()
    return out


def load_flag_checkpoint(flag: str, path: Path):
    """load_checkpoint(), its errors said as errors of the flag that named the file."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{flag}: {e}") from None


def autoencoder_metrics(ae_ckpt: Checkpoint) -> dict:
    """The autoencoder's own metrics from --ae: an autoencoder file's, or those a model file (which bundles one)
    carries for it; never a world model's training losses."""
    if ae_ckpt.kind == "world_model":
        return dict(ae_ckpt.extra.get("ae_metrics", {}))
    return dict(ae_ckpt.metrics)


def run(args: argparse.Namespace) -> int:
    """Train the world model on cached latents; write RUN/model.safetensors."""
    tcfg = config_from_args(args)
    # every path before any work (reading episodes, encoding them): the error names the flag the user typed
    data_path(args.data)
    ae_path = checkpoint_path("--ae", args.ae, "ae.safetensors", "reverie train ae")
    idm_path = checkpoint_path("--idm", args.idm, "idm.safetensors", "reverie train idm") if args.idm else None
    if args.init:
        init_path(args.init)
    elif args.fresh_actions:
        raise TrainingError("--fresh-actions: starts the action inputs of a warm-started model afresh; it needs "
                            "--init MODEL (without --init every weight starts fresh anyway)")
    if args.train_only != "all" and not args.init:
        raise TrainingError(f"--train-only {args.train_only}: the other part keeps the weights of --init MODEL; give "
                            "--init (a part left at its random start would never learn)")
    flags = check_out(args, "wm", WM_RESUMABLE)
    ae_ckpt = load_flag_checkpoint("--ae", ae_path)
    idm_weights = load_flag_checkpoint("--idm", idm_path).tensors.get("idm") if idm_path else None
    if idm_path and idm_weights is None:
        raise CheckpointError(f"--idm {args.idm}: {idm_path} holds no inverse-dynamics model; pass the "
                              "idm.safetensors of 'reverie train idm'")
    init, sampling = None, None
    if args.init:  # read (and checked) before the encoding
        try:
            init, sampling = warm_start_weights(args.init)
        except (CheckpointError, TrainingError) as e:
            raise CheckpointError(f"--init: {e}") from None
        if args.fresh_actions:
            init = {k: v for k, v in init.items() if k not in ACTION_INPUTS}
            sampling = None   # a model that learns its actions anew chooses its own sampling (eval --write-model)
    src = open_episodes(args)
    if not ae_ckpt.action_spec.compatible(src.spec):
        raise CheckpointError(f"--ae {ae_path}: trained on {ae_ckpt.action_spec.game!r}, but --data {args.data} "
                              f"holds {src.spec.game!r} episodes")
    cfg = ModelConfig.from_name(args.preset, action_dim=src.spec.size)
    cfg.autoencoder = ae_ckpt.config.autoencoder
    if args.window:
        cfg.world_model.context_frames = args.window
    if args.patch is not None:
        wm = cfg.world_model
        fits = [p for p in range(1, min(wm.latent_height, wm.latent_width) + 1)
                if wm.latent_height % p == 0 and wm.latent_width % p == 0]
        if args.patch not in fits:
            raise TrainingError(f"--patch {args.patch}: the {wm.latent_height}x{wm.latent_width} latent grid of "
                                f"preset {args.preset!r} does not split into {args.patch}x{args.patch} cells; use "
                                f"one of {', '.join(map(str, fits))}")
        wm.patch = args.patch
    if args.head_patch is not None:
        wm = cfg.world_model
        if args.head_patch < 1 or wm.patch % args.head_patch:
            raise TrainingError(f"--head-patch {args.head_patch}: must divide the backbone's patch {wm.patch}; use one "
                                f"of {', '.join(str(q) for q in range(1, wm.patch + 1) if wm.patch % q == 0)}")
        wm.head_patch = args.head_patch
    if args.rollout_iters is not None:
        cfg.world_model.rollout_iters = args.rollout_iters
    if args.backbone_actions is not None:
        cfg.world_model.backbone_actions = args.backbone_actions == "on"
    if args.rollout_fraction is not None:
        cfg.world_model.rollout_fraction = args.rollout_fraction
    if args.change_weight is not None:
        cfg.world_model.change_weight = args.change_weight
    if args.shortcut_decay is not None:
        cfg.world_model.shortcut_decay = args.shortcut_decay
    if args.object_weight is not None:
        cfg.world_model.object_weight = args.object_weight
    if sampling is not None:  # a fine-tune plays as the model it came from until eval re-chooses (--write-model)
        for k, v in sampling.items():
            setattr(cfg.world_model, k, v)
    cfg.validate()
    probes = object_probes(src, args.objects) if cfg.world_model.object_weight > 0 else None
    if args.objects is not None and probes is None:
        raise TrainingError("--objects: names the probes that --object-weight weighs; give --object-weight W > 0")
    if init is not None:   # weights of another shape are refused before any encoding
        with torch.device("meta"):   # shapes only: no memory, no random init
            shape_only = WorldModel(cfg.world_model)
        warm_start(shape_only, init, args.init, assign=True)
    window = cfg.world_model.context_frames
    starts = confident_windows(src, args.data, window, args.min_label_confidence)
    if not 0.0 < args.focus_share <= 1.0:   # NaN fails too
        raise TrainingError(f"--focus-share {args.focus_share}: must be in (0, 1]")
    focus = None
    if args.focus is not None:
        focus = focus_windows(src, starts, args.focus, window, cfg.world_model.token_grid,
                              progress=not args.no_progress)
    started = start_run(args.out, tcfg, {"stage": "wm", "flags": flags, "model": cfg.to_dict(),
                                         "data": src.summary(), "ae": str(ae_path), "window": window},
                        args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    ae = load_into(Autoencoder(cfg.autoencoder), ae_ckpt, "ae").to(device)
    cache, fp = run_dir.root / "latents.cache", fingerprint_of(src, ae_path)
    if dist_info.world > 1:  # rank 0 encodes (or finds the cache); the other ranks then read its cache
        import torch.distributed as tdist

        if dist_info.main:
            encode_dataset(src, ae, device, cache, fp, progress=not args.no_progress)
        tdist.barrier()
    latents = encode_dataset(src, ae, device, cache, fp, progress=dist_info.main and not args.no_progress)
    model = WorldModel(cfg.world_model).to(device)
    allz = torch.cat([z.float() for z in latents])                     # (sum T, C, h, w)
    model.latent_mean.copy_(allz.mean(dim=(0, 2, 3)))
    model.latent_std.copy_(allz.std(dim=(0, 2, 3)).clamp_min(1e-3))
    del allz
    if init is not None:
        if args.fresh_actions:   # loaded as zeros, whatever --init's action inputs were (they were left out above)
            init.update({k: torch.zeros_like(v) for k, v in model.state_dict().items() if k in ACTION_INPUTS})
        missing = warm_start(model, init, args.init)
        print(f"warm start from {args.init}" + (", the action inputs at zero" if args.fresh_actions else "")
              + (f"; new (freshly initialised) weights: {missing}" if missing else ""))
        if sampling is not None:
            print(f"sampling defaults kept from --init: {sampling['sampling_steps']} step(s), guidance "
                  f"{sampling['guidance']:g}, context noise {sampling['context_noise']:g} "
                  "('reverie eval --write-model' re-chooses them for the new weights)")
    if args.train_only != "all":
        kept = "head" if args.train_only == "backbone" else "backbone"
        getattr(model, kept).requires_grad_(False)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"--train-only {args.train_only}: {n:,} weights train, the {kept} keeps --init's")
    latents_dev = [z.to(device) for z in latents]
    actions_dev = [torch.from_numpy(a).to(device) for a in src.actions]
    confidence_dev = [torch.from_numpy(c).to(device) for c in src.confidence]
    objects_dev = None
    if probes is not None:
        wm = cfg.world_model
        objects_dev = [torch.from_numpy(token_masks(src.episode_frames(e), probes, wm.token_grid)).to(device)
                       for e in tqdm(range(len(src.lengths)), desc="object masks", unit="episode",
                                     disable=not dist_info.main or args.no_progress)]
        share = sum(int(m.sum()) for m in objects_dev) / sum(m.numel() for m in objects_dev)
        if dist_info.main:
            print(f"object weight {wm.object_weight}: {', '.join(p.name for p in probes)} in {share:.1%} of tokens")

    def batch_fn(step: int, d: Dist):
        """This rank's slice of the windows of `step`: (normalised latents, actions, their confidence or None,
        the --unsure-actions mode, object token masks or None), as WorldModel.loss takes them."""
        per = tcfg.batch // d.world
        gen = step_generator(tcfg.seed, step)
        sel = (pick_windows(gen, starts, tcfg.batch) if focus is None else
               pick_focused_windows(gen, starts, focus, tcfg.batch, args.focus_share))[d.rank * per:(d.rank + 1) * per]
        z = torch.stack([latents_dev[e][s:s + window] for e, s in sel]).float()   # (b, W, C, h, w)
        a = torch.stack([actions_dev[e][s:s + window] for e, s in sel])            # (b, W, A)
        c = None
        if args.unsure_actions != "keep":
            c = torch.stack([confidence_dev[e][s:s + window] for e, s in sel])     # (b, W)
        o = None if objects_dev is None else torch.stack([objects_dev[e][s:s + window] for e, s in sel])  # (b, W, N)
        return model.normalize(z), a, c, args.unsure_actions, o

    def loss_fn(m, batch):
        """The world model's loss and its per-tau-bin diagnostics (device tensors)."""
        loss, stats = m(*batch)
        return loss, tau_bin_stats(stats)

    def sample_fn(step: int):
        """Rollouts of the model against the training data: images and their PSNR."""
        from train.training.rollout import write_samples

        preview_seed = seed_for(tcfg.seed, stream="preview") % 2**31  # the rollout adds to it: keep it small
        return write_samples(run_dir.root / "samples", step, ae, model, src, device, seed=preview_seed)

    last = fit(run=run_dir, model=model, tcfg=tcfg, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, sample_fn=sample_fn, describe=lambda v: f"loss {v['loss']:.4f}",
               resume=not args.no_resume, progress=not args.no_progress)
    weights = trained_weights(run_dir, "model.safetensors", last, model, tcfg, dist_info)
    if weights is None:
        return 0
    if dist_info.main:
        model = WorldModel(cfg.world_model).to(device)
        model.load_state_dict(weights)
        metrics = {k: float(v) for k, v in last.items()}
        metrics.update(sample_fn(tcfg.steps) or {})
        n0 = min(window // 2, src.lengths[0])
        parts = {"ae": ae.state_dict(), "wm": model.state_dict(),
                 "start": {"frames": torch.from_numpy(src.episode_frames(0)[:n0].copy()),
                           "actions": torch.from_numpy(src.actions[0][:n0].copy())}}
        if idm_weights is not None:
            parts["idm"] = idm_weights
        path = save_checkpoint(run_dir.root / "model.safetensors", kind="world_model", config=cfg,
                               action_spec=src.spec, parts=parts, data=src.summary(), metrics=metrics,
                               extra={"ae_metrics": autoencoder_metrics(ae_ckpt)}, half=args.half)
        print(f"wrote {path}")
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0
