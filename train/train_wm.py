"""`reverie train wm`: train the causal world model on latents of the recorded episodes.

The dataset is encoded by the (frozen) autoencoder once and cached in RUN/latents.cache (safetensors format), keyed by a
fingerprint of the episode files and the autoencoder, so later runs and resumes skip the encoding. Writes
RUN/model.safetensors: autoencoder + world model (+ the inverse-dynamics model when --idm is given).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import CheckpointError, atomic_target, load_checkpoint, load_into, save_checkpoint
from engine.config import ModelConfig
from engine.world_model import WorldModel
from train.cli import train_config
from train.data import EpisodeSource
from train.loop import Dist, RunDir, fit, start_run, step_generator, trained_weights

TAU_BINS = 4


def resolve_checkpoint(path: str, name: str) -> Path:
    """A checkpoint file, or a run folder holding `name`."""
    p = Path(path)
    return p / name if p.is_dir() else p


def encode_dataset(src: EpisodeSource, ae: Autoencoder, device: torch.device, cache: Path,
                   fingerprint: str, batch: int = 256) -> list[torch.Tensor]:
    """Latents (T, C, h, w) float16 of every episode, from the cache when its fingerprint matches."""
    if cache.exists():
        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return [f.get_tensor(f"ep{i:06d}") for i in range(len(src.lengths))]
    out = []
    ae.eval()
    with torch.no_grad(), tqdm(total=src.num_frames, desc="encode", unit="frame") as bar:
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
    h = hashlib.sha256()
    for info in src.ds.episodes:
        st = info.path.stat()
        h.update(f"{info.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    st = ae_path.stat()
    h.update(f"{ae_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def warm_start_weights(path: str) -> dict[str, torch.Tensor]:
    """World-model weights to start from: a checkpoint's 'wm' part, or a training state's model.state (a state
    folder, or a run folder or its state/ folder, whose manifest names the newest state)."""
    p = Path(path)
    if p.is_dir():
        run = RunDir(p.parent if (p / "manifest.json").is_file() else p)  # a state/ folder or its run folder
        if (run.state_root / "manifest.json").is_file():
            p = run.latest()
        p = p / "model.state"
    if p.suffix == ".state":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{p}: not a readable training state ({e})") from None
    ck = load_checkpoint(p)
    if not ck.has("wm"):
        raise CheckpointError(f"{p}: holds no world-model weights to start from")
    return ck.tensors["wm"]


def tau_bin_stats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Flow-matching loss per tau bin (a free diagnostic of where the model struggles) + shortcut loss."""
    out = {}
    fm = ~stats["shortcut"]
    tau, loss = stats["tau"][fm], stats["loss"][fm]
    for b in range(TAU_BINS):
        sel = (tau >= b / TAU_BINS) & (tau < (b + 1) / TAU_BINS)
        if bool(sel.any()):
            out[f"loss_tau{b}"] = float(loss[sel].mean())
    if bool(stats["shortcut"].any()):
        out["loss_shortcut"] = float(stats["loss"][stats["shortcut"]].mean())
    return out


def run(args: argparse.Namespace) -> int:
    tcfg = train_config(args)
    ae_path = resolve_checkpoint(args.ae, "ae.safetensors")
    ae_ckpt = load_checkpoint(ae_path)
    src = EpisodeSource(args.data, skip_bad=args.skip_bad)
    if not ae_ckpt.action_spec.compatible(src.spec):
        raise CheckpointError(f"{ae_path}: trained on {ae_ckpt.action_spec.game!r}, but {args.data} holds "
                              f"{src.spec.game!r} episodes")
    cfg = ModelConfig.from_name(args.preset, action_dim=src.spec.size)
    cfg.autoencoder = ae_ckpt.config.autoencoder
    if args.window:
        cfg.world_model.context_frames = args.window
    if args.rollout_iters is not None:
        cfg.world_model.rollout_iters = args.rollout_iters
    if args.backbone_actions is not None:
        cfg.world_model.backbone_actions = args.backbone_actions == "on"
    if args.rollout_fraction is not None:
        cfg.world_model.rollout_fraction = args.rollout_fraction
    cfg.validate()
    window = cfg.world_model.context_frames
    started = start_run(args.out, tcfg, {"stage": "wm", "model": cfg.to_dict(), "data": src.summary(),
                                         "ae": str(ae_path), "window": window}, args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    ae = load_into(Autoencoder(cfg.autoencoder), ae_ckpt, "ae").to(device)
    cache, fp = run_dir.root / "latents.cache", fingerprint_of(src, ae_path)
    if dist_info.world > 1:  # rank 0 encodes (or finds the cache); the other ranks then read its cache
        import torch.distributed as tdist

        if dist_info.main:
            encode_dataset(src, ae, device, cache, fp)
        tdist.barrier()
    latents = encode_dataset(src, ae, device, cache, fp)
    model = WorldModel(cfg.world_model).to(device)
    allz = torch.cat([z.float() for z in latents])                     # (sum T, C, h, w)
    model.latent_mean.copy_(allz.mean(dim=(0, 2, 3)))
    model.latent_std.copy_(allz.std(dim=(0, 2, 3)).clamp_min(1e-3))
    del allz
    if args.init:
        init = warm_start_weights(args.init)
        missing, unexpected = model.load_state_dict(init, strict=False)
        if unexpected:
            raise CheckpointError(f"{args.init}: weights that this model does not have: {unexpected[:5]}")
        print(f"warm start from {args.init}" + (f"; new (freshly initialised) weights: {missing}" if missing else ""))
    lengths = torch.tensor([len(z) for z in latents], dtype=torch.float64)
    if int(lengths.max()) < window:
        raise ValueError(f"{args.data}: the longest episode has {int(lengths.max())} frames, fewer than the "
                         f"window of {window}; record longer episodes or pass --window")
    weights = torch.where(lengths >= window, lengths - window + 1, torch.zeros_like(lengths))
    latents_dev = [z.to(device) for z in latents]
    actions_dev = [torch.from_numpy(a).to(device) for a in src.actions]

    def batch_fn(step: int, d: Dist):
        gen = step_generator(tcfg.seed, step)
        eps = torch.multinomial(weights, tcfg.batch, replacement=True, generator=gen).tolist()
        starts = [int(torch.randint(0, len(latents[e]) - window + 1, (1,), generator=gen)) for e in eps]
        per = tcfg.batch // d.world
        sel = list(zip(eps, starts))[d.rank * per:(d.rank + 1) * per]
        z = torch.stack([latents_dev[e][s:s + window] for e, s in sel]).float()   # (b, W, C, h, w)
        a = torch.stack([actions_dev[e][s:s + window] for e, s in sel])            # (b, W, A)
        return model.normalize(z), a

    def loss_fn(m, batch):
        loss, stats = m(*batch)
        return loss, tau_bin_stats(stats)

    def sample_fn(step: int):
        from train.rollout import write_samples

        return write_samples(run_dir.root / "samples", step, ae, model, src, device, seed=tcfg.seed)

    last = fit(run=run_dir, model=model, tcfg=tcfg, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, sample_fn=sample_fn, describe=lambda v: f"loss {v['loss']:.4f}",
               resume=not args.no_resume)
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
        if args.idm:
            parts["idm"] = load_checkpoint(resolve_checkpoint(args.idm, "idm.safetensors")).tensors["idm"]
        path = save_checkpoint(run_dir.root / "model.safetensors", kind="world_model", config=cfg,
                               action_spec=src.spec, parts=parts, data=src.summary(), metrics=metrics,
                               extra={"ae_metrics": ae_ckpt.metrics}, half=args.half)
        print(f"wrote {path}")
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0
