"""`reverie train wm`: train the causal world model on latents of the recorded episodes.

A run is three steps, a page each: prepare() checks every input and resolves the model, its data and its windows
before any work; fit_model() encodes the data, builds the model (warm-started with --init) and trains it with the
loss of train/training/wm_loss.py; write() writes RUN/model.safetensors: autoencoder + world model (+ the
inverse-dynamics model when --idm is given), with the loss it was trained with in its extra ("loss").

The dataset is encoded by the (frozen) autoencoder once, in float32 as a Session encodes at play time, and cached in
RUN/latents.cache (safetensors format), keyed by a fingerprint of the episode files and the autoencoder, so later runs
and resumes skip the encoding.

Actions filled in by `reverie data label` carry the labeling model's confidence; `--set min_label_confidence=X`
trains only on windows whose every action is at least X sure (recorded actions count as sure), so a wrongly read
action does not teach the model that the avatar ignored it. The default, 0, trains on every window.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import Checkpoint, CheckpointError, atomic_target, load_checkpoint, load_into, save_checkpoint
from engine.config import PRESETS, ModelConfig
from engine.world_model import ACTION_INPUTS, WorldModel
from train.data.windows import EpisodeSource, pick_focused_windows, pick_windows
from train.games.probes import Probe, probe_games, probes_for, shared_tokens, token_masks
from train.training.ae import encoder_fingerprint, encoder_lineage
from train.training.config import (
    RESUMABLE,
    TrainConfig,
    TrainingError,
    add_settings,
    at_least,
    checkpoint_path,
    data_path,
    init_path,
    open_episodes,
    restate,
    seed_for,
    setting,
    settings_from_args,
    step_generator,
    within,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import RunDir, check_out
from train.training.wm_loss import WorldModelLoss, tau_bin_stats

HELP = "the world model (causal backbone + diffusion head) on cached latents"
# half and idm shape only the file written at the end, so a run may resume with them changed
WM_RESUMABLE = RESUMABLE | {"half", "idm"}
ENCODING = "float32"   # how the cached latents were encoded: part of the cache's fingerprint


@dataclass
class WMSettings(TrainConfig):
    """`reverie train wm`: the shared settings, the model's shape, the loss's knobs and which windows it trains on."""

    steps: int = restate("steps", 3000)
    batch: int = restate("batch", 8)
    lr: float = restate("lr", 3e-4)
    preset: str = setting("tiny", "model size: tiny, small, oasis (the autoencoder's own: --ae must be of it)",
                          flag=True)
    window: int = setting(0, "frames per training window (0: the preset's)", flag=True, check=at_least(0))
    half: bool = setting(False, "store the final model's weights as float16 (half size)", flag=True)
    patch: int = setting(0, "latent cells per token side (0: the preset's, 2): 1 gives every 8x8-pixel cell a token "
                         "of its own, 4x the tokens a frame, for sprites smaller than a 2x2 token; on a GPU, where "
                         "the step's cost hardly shows, the research recommends 1", check=at_least(0))
    backbone_actions: bool = setting(True, "the backbone also reads the action that led to each frame (false: the "
                                     "head alone reads actions, as the shipped models do)")
    fresh_actions: bool = setting(False, "with --init: the weights that read the action start from zero and the rest "
                                  "from --init, so the model learns what the actions do from this data alone "
                                  "(actions of another spec or count)")
    rollout_iters: int = setting(WorldModelLoss.rollout_iters, "train on the model's own rollouts against drift: "
                                 "Jacobi passes K (0: off)", check=at_least(0))
    rollout_fraction: float = setting(WorldModelLoss.rollout_fraction, "share of windows whose context is the "
                                      "model's own rollout (with rollout_iters)", check=within(0, 1))
    change_weight: float = setting(WorldModelLoss.change_weight, "extra loss weight on the tokens that change from "
                                   "the previous frame (moving sprites), relative to the batch's mean change; 0: "
                                   "every token weighs the same", check=within(0, 100))
    object_weight: float = setting(WorldModelLoss.object_weight, "extra loss weight (1 + W, then scaled to mean 1) "
                                   "on the tokens that hold an object the game's probes find in the frame to predict "
                                   "(builtin:gems: avatar, gems, enemies, score; ale:Breakout: paddle, ball, bricks), "
                                   "moving or not; needs a game with probes", check=within(0, 100))
    objects: str = setting("", "with object_weight: which of the game's probes weigh, comma-separated (empty: all)")
    focus: str = setting("", "two of the game's probes, A,B (builtin:gems: avatar,enemies): focus_share of every "
                         "batch's windows are drawn from those where the two meet in one token in the window's "
                         "second half (the frames a long dream loses a sprite in); empty: off")
    focus_share: float = setting(0.5, "with focus: the share of each batch drawn from those windows",
                                 check=within(0, 1, open_lo=True))
    min_label_confidence: float = setting(0.0, "train only on windows whose every action has at least this "
                                          "confidence: actions filled in by 'reverie data label' carry the "
                                          "labeling model's, recorded ones count as 1 (0: every window)",
                                          check=within(0, 1))

    def loss(self) -> WorldModelLoss:
        """The training loss with these settings' knobs."""
        return WorldModelLoss(rollout_iters=self.rollout_iters, rollout_fraction=self.rollout_fraction,
                              change_weight=self.change_weight, object_weight=self.object_weight)


SETTINGS = WMSettings


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train wm`: its paths, then its settings (train.training.config.add_settings)."""
    p.add_argument("--data", required=True, help="folder of episode files (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run of this stage resumes)")
    p.add_argument("--ae", required=True, help="autoencoder checkpoint (.safetensors from 'reverie train ae')")
    p.add_argument("--idm", help="inverse-dynamics checkpoint to bundle into the model file, for eval")
    p.add_argument("--init", default=None,
                   help="warm start: world-model weights from a checkpoint or a training state folder (new weights "
                        "the model has since gained start fresh); the run itself starts at step 0")
    add_settings(p, WMSettings)


# ---------------------------------------------------------------------------------------------------------------
# prepare: every input checked, the model and its windows resolved, before any work
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WarmStart:
    """What `--init` gives: world-model weights, the checkpoint's run-time sampling defaults (None for a training
    state) and the encoder whose latents those weights read, with where it was found (None where unknown)."""

    weights: dict[str, torch.Tensor]
    sampling: dict[str, float] | None
    encoder: dict[str, torch.Tensor] | None
    encoder_from: str | None


@dataclass
class Plan:
    """A run of `train wm`, every input checked (prepare)."""

    settings: WMSettings
    cfg: ModelConfig
    src: EpisodeSource
    ae_path: Path
    ae_ckpt: Checkpoint
    idm_weights: dict[str, torch.Tensor] | None
    init: WarmStart | None
    probes: list[Probe] | None
    starts: list
    focus: list[np.ndarray] | None
    flags: dict

    def resolved(self) -> dict:
        """What config.json records beside the settings (which start_run writes as "train")."""
        return {"stage": "wm", "flags": self.flags, "model": self.cfg.to_dict(), "loss": asdict(self.settings.loss()),
                "data": self.src.summary(), "ae": str(self.ae_path), "window": self.cfg.world_model.context_frames}


def prepare(args: argparse.Namespace, s: WMSettings) -> Plan:
    """Check every path, the run folder, the checkpoints and the data, and resolve the model and its windows; each
    bad input is a one-line error naming what the user typed, and nothing has been written yet."""
    data_path(args.data)
    ae_path = checkpoint_path("--ae", args.ae, "ae.safetensors", "reverie train ae")
    idm_path = checkpoint_path("--idm", args.idm, "idm.safetensors", "reverie train idm") if args.idm else None
    if args.init:
        init_path(args.init)
    elif s.fresh_actions:
        raise TrainingError(f"{s.said('fresh_actions')}: starts the action inputs of a warm-started model afresh; it "
                            "needs --init MODEL (without --init every weight starts fresh anyway)")
    if s.objects and not s.object_weight > 0:
        raise TrainingError(f"{s.said('objects')}: names the probes that object_weight weighs; add --set "
                            "object_weight=W with W > 0")
    flags = check_out(args, "wm", WM_RESUMABLE)
    ae_ckpt = load_flag_checkpoint("--ae", ae_path)
    if not ae_ckpt.has("ae"):
        raise CheckpointError(f"--ae {args.ae}: holds no autoencoder; pass the ae.safetensors of 'reverie train ae' "
                              "or a model file")
    idm_weights = load_flag_checkpoint("--idm", idm_path).tensors.get("idm") if idm_path else None
    if idm_path and idm_weights is None:
        raise CheckpointError(f"--idm {args.idm}: {idm_path} holds no inverse-dynamics model; pass the "
                              "idm.safetensors of 'reverie train idm'")
    init = None
    if args.init:  # read (and checked) before the encoding
        try:
            init = warm_start_weights(args.init)
        except (CheckpointError, TrainingError) as e:
            raise CheckpointError(f"--init: {e}") from None
        check_encoder(args, ae_ckpt, init)
        if s.fresh_actions:
            init.weights = {k: v for k, v in init.weights.items() if k not in ACTION_INPUTS}
            init.sampling = None   # a model that learns its actions anew chooses its own sampling (eval --write-model)
    src = open_episodes(args)
    cfg = model_config(args, s, ae_ckpt, src, init)
    probes = object_probes(src, s.objects or None) if s.object_weight > 0 else None
    if init is not None:   # weights of another shape are refused before any encoding
        with torch.device("meta"):   # shapes only: no memory, no random init
            shape_only = WorldModel(cfg.world_model)
        warm_start(shape_only, init.weights, args.init, assign=True)
    window = cfg.world_model.context_frames
    starts = confident_windows(src, args.data, window, s.min_label_confidence)
    focus = None
    if s.focus:
        focus = focus_windows(src, starts, s.focus, window, cfg.world_model.token_grid, progress=not args.no_progress)
    return Plan(s, cfg, src, ae_path, ae_ckpt, idm_weights, init, probes, starts, focus, flags)


def model_config(args: argparse.Namespace, s: WMSettings, ae_ckpt: Checkpoint, src: EpisodeSource,
                 init: WarmStart | None) -> ModelConfig:
    """The model to train: the preset's world model on --ae's autoencoder, with the settings' window, patch and
    action inputs, and --init's sampling defaults (a fine-tune plays as the model it came from until eval re-chooses
    them with --write-model)."""
    if not ae_ckpt.action_spec.compatible(src.spec):
        raise CheckpointError(f"--ae {args.ae}: trained on {ae_ckpt.action_spec.game!r}, but --data {args.data} "
                              f"holds {src.spec.game!r} episodes")
    cfg = ModelConfig.from_name(s.preset, action_dim=src.spec.size)
    ae, wm = ae_ckpt.config.autoencoder, cfg.world_model
    theirs, ours = (ae.latent_channels, ae.latent_height, ae.latent_width), (wm.latent_channels, wm.latent_height,
                                                                              wm.latent_width)
    if theirs != ours:
        named = ae_ckpt.config.name
        fix = f"pass --preset {named} (the autoencoder's), or" if named in PRESETS and named != s.preset else "or"
        raise TrainingError(f"--ae {args.ae}: its latents are {'x'.join(map(str, theirs))}, the world model of preset "
                            f"{s.preset!r} reads {'x'.join(map(str, ours))}; {fix} train an autoencoder of this "
                            f"preset first: 'reverie train ae --preset {s.preset} --data {args.data} --out RUN'")
    if tuple(src.frame_shape) != (ae.height, ae.width, 3):
        raise TrainingError(f"--data {args.data}: frames are {tuple(src.frame_shape)}, --ae {args.ae} encodes "
                            f"({ae.height}, {ae.width}, 3); record with --size {ae.height}, or train an autoencoder "
                            "on these frames")
    cfg.autoencoder = ae
    wm.context_frames = s.window or wm.context_frames
    if s.patch:
        fits = [p for p in range(1, min(wm.latent_height, wm.latent_width) + 1)
                if wm.latent_height % p == 0 and wm.latent_width % p == 0]
        if s.patch not in fits:
            raise TrainingError(f"{s.said('patch')}: the {wm.latent_height}x{wm.latent_width} latent grid of preset "
                                f"{s.preset!r} does not split into {s.patch}x{s.patch} cells; use one of "
                                f"{', '.join(map(str, fits))}")
        wm.patch = s.patch
    wm.backbone_actions = s.backbone_actions
    if init is not None and init.sampling is not None:
        for k, v in init.sampling.items():
            setattr(wm, k, v)
    cfg.validate()
    return cfg


def check_encoder(args: argparse.Namespace, ae_ckpt: Checkpoint, init: WarmStart) -> None:
    """--init's world model reads the latents of one encoder: --ae must hold it (equal at float16, the precision
    models ship in; a decoder retrained with freeze_encoder keeps it) or one trained from it (`train ae --init`,
    which records the encoders it descends from), or the warm start reads latents it was never trained on."""
    if init.encoder is None:
        return
    theirs = encoder_fingerprint(init.encoder)
    if theirs in encoder_lineage(ae_ckpt.tensors["ae"], ae_ckpt.extra):
        return
    raise TrainingError(f"--ae {args.ae}: its encoder is not the one --init {args.init}'s world model reads, nor "
                        "trained from it, so the warm start would read latents it was never trained on; pass --ae "
                        f"{init.encoder_from}, or an autoencoder trained from it ('reverie train ae --init "
                        f"{init.encoder_from}'), or leave --init out to train a world model on this autoencoder")


def load_flag_checkpoint(flag: str, path: Path):
    """load_checkpoint(), its errors said as errors of the flag that named the file."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{flag}: {e}") from None


def warm_start_weights(path: str) -> WarmStart:
    """World-model weights to start from: a checkpoint's 'wm' part, or a training state's model.state (a state
    folder, or a run folder or its state/ folder, whose manifest names the newest state). With them, a checkpoint's
    run-time sampling defaults (head steps, guidance, context noise), which a fine-tune of it keeps, and the encoder
    its world model reads: the checkpoint's own, or for a training state the autoencoder its run recorded. The
    checkpoint is read once."""
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
            weights = load_file(str(p))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{p}: not a readable training state ({e})") from None
        encoder, source = recorded_encoder(p)
        return WarmStart(weights, None, encoder, source)
    ck = load_checkpoint(p)
    if not ck.has("wm"):
        raise CheckpointError(f"{p}: holds no world-model weights to start from")
    wm = ck.config.world_model
    sampling = {"sampling_steps": wm.sampling_steps, "guidance": wm.guidance, "context_noise": wm.context_noise}
    return WarmStart(ck.tensors["wm"], sampling, ck.tensors.get("ae"), str(path) if ck.has("ae") else None)


def recorded_encoder(state: Path) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The autoencoder weights the `train wm` run of a training state file was made with (its config.json's "ae"),
    and that file's path; (None, None) where the run or its autoencoder file is gone."""
    for folder in list(state.parents)[:3]:   # step_X/, state/, the run folder
        cfg = folder / "config.json"
        if not cfg.is_file():
            continue
        try:
            ae = json.loads(cfg.read_text()).get("ae")
            return (load_checkpoint(ae).tensors.get("ae"), ae) if ae and Path(ae).is_file() else (None, None)
        except (OSError, ValueError, AttributeError, CheckpointError):
            return None, None
    return None, None


def warm_start(model: WorldModel, init: dict[str, torch.Tensor], path: str, assign: bool = False) -> list[str]:
    """Load `--init` weights into model (names and shapes must fit; weights the model has gained since start
    fresh); the names of those fresh weights. `assign` for a model on the meta device (a check of names and shapes)."""
    try:
        missing, unexpected = model.load_state_dict(init, strict=False, assign=assign)
    except RuntimeError as e:  # a weight of another shape (another preset, another patch)
        c, hint = model.cfg, ""
        theirs, acts = init.get("head.out.bias"), init.get("head.action_in.weight")
        if theirs is not None and theirs.numel() != c.token_dim:
            hint = (f"; its tokens hold {theirs.numel()} latent values, this model's {c.token_dim} (patch "
                    f"{c.patch}): train with the patch it was trained with (--set patch=P), or without --init")
        elif acts is not None and acts.ndim == 2 and acts.shape[1] != c.action_dim:
            hint = (f"; it reads actions of {acts.shape[1]} values, this data's have {c.action_dim}: add "
                    "--set fresh_actions=true to learn the action inputs anew on this data")
        raise CheckpointError(f"--init {path}: its weights do not fit this model "
                              f"({str(e).strip().splitlines()[-1].strip()}){hint}") from None
    if unexpected:
        raise CheckpointError(f"--init {path}: weights that this model does not have: {unexpected[:5]}")
    return missing


# ---------------------------------------------------------------------------------------------------------------
# The windows a run trains on
# ---------------------------------------------------------------------------------------------------------------
def object_probes(src: EpisodeSource, names: str | None, setting_name: str = "object_weight") -> list[Probe]:
    """The probes the loss weighs (or --focus pairs): the data's game's, all or those `names` lists."""
    games = sorted(set(src.env_ids))
    if len(games) != 1 or not probes_for(games[0]):
        raise TrainingError(f"--set {setting_name}: needs data of one game that declares object probes "
                            f"({', '.join(probe_games())}); this data is from {', '.join(games) or 'no game'}")
    known = probes_for(games[0])
    if names is None:
        return list(known.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    which = "objects" if setting_name == "object_weight" else setting_name
    if unknown or not wanted:
        raise TrainingError(f"--set {which}={names}: {games[0]} has the probes {', '.join(known)}; name some of them"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return [known[n] for n in wanted]


def focus_windows(src: EpisodeSource, starts: list, names: str, window: int, grid: tuple[int, int],
                  progress: bool = False) -> list[np.ndarray]:
    """Per episode, the starts (of `starts`) whose window has, in its second half, a frame where the two probes
    `names` ("a,b") find pixels in one token of the `grid`; a TrainingError when the names are not two of the game's
    probes or no window qualifies."""
    probes = object_probes(src, names, setting_name="focus")
    if len(probes) != 2 or probes[0].name == probes[1].name:
        raise TrainingError(f"--set focus={names}: name two different probes of the game, as A,B (builtin:gems: "
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
        raise TrainingError(f"--set focus={names}: {probes[0].name} and {probes[1].name} never share a token in this "
                            "data; record play where they meet, or leave focus out")
    print(f"focus {probes[0].name},{probes[1].name}: {kept} of {total} windows ({100 * kept / total:.1f}%) meet in "
          f"one token in their second half")
    return focus


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
            raise TrainingError(f"--set min_label_confidence={min_confidence}: no window of {window} frames has every "
                                "action that sure; lower it (see 'reverie data info' for the data's mean confidence)")
        print(f"min_label_confidence {min_confidence}: training on {kept} of {total} windows "
              f"({100 * kept / total:.1f}%)")
    return starts


# ---------------------------------------------------------------------------------------------------------------
# fit: encode the data, build the model, train it
# ---------------------------------------------------------------------------------------------------------------
def encode_dataset(src: EpisodeSource, ae: Autoencoder, device: torch.device, cache: Path,
                   fingerprint: str, batch: int = 256, progress: bool = True) -> list[torch.Tensor]:
    """Latents (T, C, h, w) float16 of every episode, from the cache when its fingerprint matches. Encoded in float32
    (no autocast), as a Session encodes the frames it is started from: the model trains on the latents it will read."""
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
                zs.append(ae.encode(x).float().cpu())
                bar.update(len(x))
            out.append(torch.cat(zs).half().contiguous())
    with atomic_target(cache) as tmp:
        save_file({f"ep{i:06d}": z.contiguous() for i, z in enumerate(out)}, str(tmp),
                  metadata={"fingerprint": fingerprint})
    return out


def fingerprint_of(src: EpisodeSource, ae_path: Path) -> str:
    """A key of the episode files, the autoencoder file (names, sizes, times) and the encoding precision: the latent
    cache's validity."""
    h = hashlib.sha256(ENCODING.encode())
    for info in src.ds.episodes:
        st = info.path.stat()
        h.update(f"{info.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    st = ae_path.stat()
    h.update(f"{ae_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def build_model(plan: Plan, latents: list[torch.Tensor], device: torch.device) -> WorldModel:
    """The world model on `device`: the latents' per-channel statistics, --init's weights where given."""
    s, init = plan.settings, plan.init
    model = WorldModel(plan.cfg.world_model).to(device)
    allz = torch.cat([z.float() for z in latents])                     # (sum T, C, h, w)
    model.latent_mean.copy_(allz.mean(dim=(0, 2, 3)))
    model.latent_std.copy_(allz.std(dim=(0, 2, 3)).clamp_min(1e-3))
    del allz
    if init is None:
        return model
    if s.fresh_actions:   # loaded as zeros, whatever --init's action inputs were (prepare left them out)
        init.weights.update({k: torch.zeros_like(v) for k, v in model.state_dict().items() if k in ACTION_INPUTS})
    missing = warm_start(model, init.weights, plan.flags["init"])
    print(f"warm start from {plan.flags['init']}" + (", the action inputs at zero" if s.fresh_actions else "")
          + (f"; new (freshly initialised) weights: {missing}" if missing else ""))
    if init.sampling is not None:
        print(f"sampling defaults kept from --init: {init.sampling['sampling_steps']} step(s), guidance "
              f"{init.sampling['guidance']:g}, context noise {init.sampling['context_noise']:g} "
              "('reverie eval --write-model' re-chooses them for the new weights)")
    return model


def fit_model(plan: Plan, run_dir: RunDir, device: torch.device, dist_info: Dist, args: argparse.Namespace):
    """Encode the data (rank 0 writes the cache the others read), build the model and train it: (the autoencoder,
    the model, the last logged values)."""
    s, src, progress = plan.settings, plan.src, not args.no_progress
    ae = load_into(Autoencoder(plan.cfg.autoencoder), plan.ae_ckpt, "ae").to(device)
    cache, fp = run_dir.root / "latents.cache", fingerprint_of(src, plan.ae_path)
    if dist_info.world > 1:  # rank 0 encodes (or finds the cache); the other ranks then read its cache
        import torch.distributed as tdist

        if dist_info.main:
            encode_dataset(src, ae, device, cache, fp, progress=progress)
        tdist.barrier()
    latents = encode_dataset(src, ae, device, cache, fp, progress=dist_info.main and progress)
    model = build_model(plan, latents, device)
    latents_dev = [z.to(device) for z in latents]
    actions_dev = [torch.from_numpy(a).to(device) for a in src.actions]
    objects_dev = object_masks(plan, device, progress=dist_info.main and progress)
    window, objective = plan.cfg.world_model.context_frames, s.loss()

    def batch_fn(step: int, d: Dist):
        """This rank's slice of the windows of `step`: (normalised latents, actions, object token masks or None)."""
        per = s.batch // d.world
        gen = step_generator(s.seed, step)
        sel = (pick_windows(gen, plan.starts, s.batch) if plan.focus is None else
               pick_focused_windows(gen, plan.starts, plan.focus, s.batch, s.focus_share))
        sel = sel[d.rank * per:(d.rank + 1) * per]
        z = torch.stack([latents_dev[e][st:st + window] for e, st in sel]).float()   # (b, W, C, h, w)
        a = torch.stack([actions_dev[e][st:st + window] for e, st in sel])            # (b, W, A)
        o = None if objects_dev is None else torch.stack([objects_dev[e][st:st + window] for e, st in sel])  # (b, W, N)
        return model.normalize(z), a, o

    def loss_fn(m, batch):
        """The loss through the model's forward (so a DDP wrapper sees the pass) and its per-tau-bin diagnostics."""
        loss, stats = m(objective, *batch)
        return loss, tau_bin_stats(stats)

    last = fit(run=run_dir, model=model, tcfg=s, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, sample_fn=lambda step: previews(plan, run_dir, ae, model, device, step),
               describe=lambda v: f"loss {v['loss']:.4f}", resume=not args.no_resume, progress=progress)
    return ae, model, last


def object_masks(plan: Plan, device: torch.device, progress: bool) -> list[torch.Tensor] | None:
    """Per episode, which tokens of each frame hold an object the weighed probes find (T, N) (None: no object
    weight)."""
    if plan.probes is None:
        return None
    src, wm = plan.src, plan.cfg.world_model
    masks = [torch.from_numpy(token_masks(src.episode_frames(e), plan.probes, wm.token_grid)).to(device)
             for e in tqdm(range(len(src.lengths)), desc="object masks", unit="episode", disable=not progress)]
    share = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    if progress:
        print(f"object weight {plan.settings.object_weight}: {', '.join(p.name for p in plan.probes)} in "
              f"{share:.1%} of tokens")
    return masks


def previews(plan: Plan, run_dir: RunDir, ae: Autoencoder, model: WorldModel, device: torch.device, step: int):
    """Rollouts of the model against the training data: images and their PSNR."""
    from train.training.rollout import write_samples

    preview_seed = seed_for(plan.settings.seed, stream="preview") % 2**31  # the rollout adds to it: keep it small
    return write_samples(run_dir.root / "samples", step, ae, model, plan.src, device, seed=preview_seed)


# ---------------------------------------------------------------------------------------------------------------
# write: the model file
# ---------------------------------------------------------------------------------------------------------------
def autoencoder_metrics(ae_ckpt: Checkpoint) -> dict:
    """The autoencoder's own metrics from --ae: an autoencoder file's, or those a model file (which bundles one)
    carries for it; never a world model's training losses."""
    if ae_ckpt.kind == "world_model":
        return dict(ae_ckpt.extra.get("ae_metrics", {}))
    return dict(ae_ckpt.metrics)


def write(plan: Plan, run_dir: RunDir, weights: dict[str, torch.Tensor], ae: Autoencoder, last: dict[str, float],
          device: torch.device) -> Path:
    """RUN/model.safetensors: the trained weights with their autoencoder (and --idm's model), a start state from the
    first episode, the last metrics with the final previews' PSNR, and the loss it was trained with."""
    s, src = plan.settings, plan.src
    model = WorldModel(plan.cfg.world_model).to(device)
    model.load_state_dict(weights)
    metrics = {k: float(v) for k, v in last.items()}
    metrics.update(previews(plan, run_dir, ae, model, device, s.steps) or {})
    n0 = min(plan.cfg.world_model.context_frames // 2, src.lengths[0])
    parts = {"ae": ae.state_dict(), "wm": model.state_dict(),
             "start": {"frames": torch.from_numpy(src.episode_frames(0)[:n0].copy()),
                       "actions": torch.from_numpy(src.actions[0][:n0].copy())}}
    if plan.idm_weights is not None:
        parts["idm"] = plan.idm_weights
    path = save_checkpoint(run_dir.root / "model.safetensors", kind="world_model", config=plan.cfg,
                           action_spec=src.spec, parts=parts, data=src.summary(), metrics=metrics,
                           extra={"ae_metrics": autoencoder_metrics(plan.ae_ckpt), "loss": asdict(s.loss()),
                                  "encoder_lineage": encoder_lineage(plan.ae_ckpt.tensors["ae"], plan.ae_ckpt.extra)},
                           half=s.half)
    print(f"wrote {path}")
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return path


def run(args: argparse.Namespace) -> int:
    """Train the world model on cached latents; write RUN/model.safetensors."""
    s = settings_from_args(args, WMSettings, "wm")
    plan = prepare(args, s)
    started = start_run(args.out, s, plan.resolved(), args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    ae, model, last = fit_model(plan, run_dir, device, dist_info, args)
    weights = trained_weights(run_dir, "model.safetensors", last, model, s, dist_info)
    if weights is not None and dist_info.main:
        write(plan, run_dir, weights, ae, last, device)
    return 0
