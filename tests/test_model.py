"""The model on CPU: shapes, block causality, cached steps vs the full pass, RoPE time shifts, and tiny overfits.

Tiny configurations only (d=32, 4x4x4 latents, 4-frame windows): every test runs in well under a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder, frames_to_tensor, tensor_to_frames
from engine.config import AutoencoderConfig, WorldModelConfig
from engine.session import Session
from engine.world_model import WorldModel, step_schedule
from train.training.wm_loss import WorldModelLoss, change_weights, object_weights, own_rollout

FP32_TOL = {"rtol": 1e-5, "atol": 1e-5}  # same math, different summation order (cached vs full attention)


def tiny_wm_cfg(**kw) -> WorldModelConfig:
    base = dict(d_model=32, heads=2, backbone_layers=2, head_layers=1, context_frames=4, latent_height=4,
                latent_width=4, latent_channels=4)
    return WorldModelConfig(**{**base, **kw})


def tiny_ae_cfg(**kw) -> AutoencoderConfig:
    base = dict(height=32, width=32, latent_channels=4, encoder_channels=(8, 8, 8), decoder_channels=(8, 8, 8))
    return AutoencoderConfig(**{**base, **kw})


def make_wm(seed: int = 0, **kw) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(tiny_wm_cfg(**kw)).eval()


def window_inputs(wm: WorldModel, B: int = 2, T: int = 4, seed: int = 1):
    """Random normalised latents (B, T, C, h, w), multi-hot actions (B, T, A) and context levels (B, T)."""
    g = torch.Generator().manual_seed(seed)
    c = wm.cfg
    z = torch.randn(B, T, c.latent_channels, c.latent_height, c.latent_width, generator=g)
    actions = (torch.rand(B, T, c.action_dim, generator=g) > 0.5).float()
    levels = 0.3 * torch.rand(B, T, generator=g)
    return z, actions, levels


def full_pass(wm: WorldModel, z, actions, levels, start: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return wm.backbone(wm.patchify(z), actions, levels, wm.rope, start=start)  # (B, T, N, D)


def cached_pass(wm: WorldModel, z, actions, levels) -> torch.Tensor:
    """The real-time backbone step (engine.graphs.BackboneStep) frame by frame over a ring KV cache of W frames, in
    both of its cache modes: in place (the torch runner) and read-only plus the new columns (the exported graph)."""
    from engine.graphs import BackboneStep
    from engine.kv_cache import RingKVCache

    c = wm.cfg
    B, T = z.shape[:2]
    step = BackboneStep(wm)
    outs = {}
    for in_place in (True, False):
        kv = RingKVCache(c.backbone_layers, B, c.heads, c.context_frames, c.tokens_per_frame, c.head_dim,
                         torch.float32, torch.device("cpu"))
        outs[in_place] = []
        with torch.no_grad():
            for t in range(T):
                cos, sin = wm.rope.frames(torch.tensor([t]))
                # the step takes raw latents and corrupts them: (1 - level) * z + level * 0 gives back z
                raw = wm.denormalize(z[:, t] / (1 - levels[:, t]).reshape(B, 1, 1, 1))
                h, k_new, v_new = step(raw, torch.zeros_like(raw), actions[:, t], levels[:, t], cos[0], sin[0],
                                       kv.k, kv.v, kv.mask(with_next=in_place),
                                       kv.write_index() if in_place else None)
                kv.append(None, None) if in_place else kv.append(k_new, v_new)
                outs[in_place].append(h)
    a, b = torch.stack(outs[True], dim=1), torch.stack(outs[False], dim=1)
    torch.testing.assert_close(a, b, **FP32_TOL)
    return a  # (B, T, N, D)


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(32, 32), (32, 64)])
def test_autoencoder_shapes(height, width):
    ae = Autoencoder(tiny_ae_cfg(height=height, width=width)).eval()
    frames = torch.rand(2, 3, height, width)
    with torch.no_grad():
        z = ae.encode(frames)
        recon = ae.decode(z)
    assert z.shape == (2, 4, height // 8, width // 8)
    assert z.abs().max() <= 1.0  # tanh-bounded latent
    assert recon.shape == frames.shape
    loss, stats = ae.loss(frames)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert set(stats) >= {"l1", "freq", "psnr"} and all(math.isfinite(v) for v in stats.values())


def test_frames_tensor_round_trip_is_exact():
    frames = torch.randint(0, 256, (2, 5, 8, 12, 3), dtype=torch.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 5, 3, 8, 12) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(tensor_to_frames(x), frames)


@pytest.mark.parametrize("patch", [1, 2])
def test_patchify_round_trip_and_patch_contents(patch):
    wm = make_wm(latent_height=4, latent_width=8, patch=patch)
    C, h, w = 4, 4, 8
    z = torch.arange(2 * 3 * C * h * w, dtype=torch.float32).reshape(2, 3, C, h, w)
    tokens = wm.patchify(z)
    N = (h // patch) * (w // patch)
    assert tokens.shape == (2, 3, N, C * patch * patch) and N == wm.cfg.tokens_per_frame
    assert torch.equal(wm.unpatchify(tokens), z)
    # token n holds exactly the latent cells of patch (n // (w/p), n % (w/p)), all channels
    for n in (0, 1, N - 1):
        i, j = divmod(n, w // patch)
        cell = z[1, 2, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].flatten()
        assert sorted(tokens[1, 2, n].tolist()) == sorted(cell.tolist())


def test_backbone_output_shape():
    wm = make_wm()
    z, actions, levels = window_inputs(wm, B=3, T=4)
    out = full_pass(wm, z, actions, levels)
    assert out.shape == (3, 4, wm.cfg.tokens_per_frame, wm.cfg.d_model)
    assert torch.isfinite(out).all()


def test_world_model_loss_is_finite_scalar_with_per_sample_stats():
    wm = make_wm().train()
    z, actions, _ = window_inputs(wm, B=3, T=4)
    loss, stats = WorldModelLoss()(wm, z, actions)
    M = 3 * (4 - 1)  # one prediction per (window, next frame)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert stats["tau"].shape == (M,) and stats["loss"].shape == (M,) and stats["shortcut"].shape == (M,)
    assert stats["shortcut"].dtype == torch.bool
    assert int(stats["shortcut"].sum()) == round(M * WorldModelLoss.shortcut_fraction)
    assert ((stats["tau"] >= 0) & (stats["tau"] <= 1)).all()
    assert torch.allclose(stats["loss"].mean(), loss.detach())
    loss.backward()
    grads = [p.grad for p in wm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_backbone_without_actions_reads_frames_only_and_the_head_still_reads_them():
    """backbone_actions=False: the backbone's output does not depend on the actions (the head alone reads them),
    its action weights stay in the layout but are frozen (no idle parameters for DDP), and training still moves
    the head's action weights."""
    wm = make_wm(backbone_actions=False).train()
    z, actions, levels = window_inputs(wm, B=2, T=4)
    assert torch.equal(full_pass(wm, z, actions, levels), full_pass(wm, z, 1 - actions, levels))
    assert not full_pass(wm, z, actions, levels).equal(full_pass(wm, z + 0.1, actions, levels))
    assert not any(p.requires_grad for p in wm.backbone.action_in.parameters())
    with torch.no_grad():  # the head's zero-initialised output layers, random: gradients reach its inputs
        for m in [blk.ada for blk in wm.head.blocks] + [wm.head.ada_out, wm.head.out]:
            m.weight.normal_(std=0.1)
    loss, _ = WorldModelLoss()(wm, z, actions)
    loss.backward()
    assert all(p.grad is None for p in wm.backbone.action_in.parameters())
    assert wm.head.action_tokens.weight.grad is not None and wm.head.action_tokens.weight.grad.abs().sum() > 0
    on = make_wm(backbone_actions=True)  # the default reads them; same weight names either way
    assert on.state_dict().keys() == wm.state_dict().keys()
    assert not full_pass(on, z, actions, levels).equal(full_pass(on, z, 1 - actions, levels))


def test_own_rollout_is_causal_keeps_frame0_and_deepens_per_pass():
    wm = make_wm()
    z, actions, _ = window_inputs(wm, B=2, T=4)

    def run(zz, iters):
        torch.manual_seed(5)
        return own_rollout(wm, zz, actions, iters)

    one = run(z, 1)
    assert one.shape == z.shape and torch.equal(one[:, 0], z[:, 0])  # the first frame stays real
    assert not torch.allclose(one[:, 1:], z[:, 1:])                   # the rest is the model's own
    # one pass: frame t comes from real frames < t, so changing the last real frame changes nothing
    z2 = z.clone()
    z2[:, -1] += 1.0
    assert torch.allclose(run(z2, 1), one, atol=1e-6)
    # pass 2 reads pass 1: frame 2 now depends on the model's frame 1, so it differs from the one-pass version
    two = run(z, 2)
    assert not torch.allclose(two[:, 2:], one[:, 2:])


def test_loss_with_own_rollout_context_is_finite_and_backpropagates():
    wm = make_wm().train()
    z, actions, _ = window_inputs(wm, B=4, T=4)
    torch.manual_seed(0)
    loss, stats = WorldModelLoss(rollout_iters=2, rollout_fraction=0.5)(wm, z, actions)
    assert loss.ndim == 0 and torch.isfinite(loss) and wm.training  # the no-grad rollout restores train mode
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in wm.parameters() if p.grad is not None)


def test_change_weights_favour_the_tokens_that_move():
    # a static background with one sprite that moves by a token each frame: its tokens weigh more, the mean stays 1
    wm = make_wm()
    c = wm.cfg
    z = torch.zeros(2, 4, c.latent_channels, c.latent_height, c.latent_width)
    for t in range(4):
        z[:, t, :, 0:2, (t % 2) * 2:(t % 2) * 2 + 2] = 3.0  # the sprite hops between two token columns
    w = change_weights(wm, z, 1.0).reshape(2, 3, -1)        # (B, T-1, N)
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    moved = torch.zeros(c.tokens_per_frame, dtype=torch.bool)
    moved[[0, 1]] = True                                    # tokens (0, 0) and (0, 1) change every frame
    assert (w[..., moved].min() > 2 * w[..., ~moved].max()).item()
    # no change anywhere: every token weighs the same
    still = torch.randn(1, 3, c.latent_channels, c.latent_height, c.latent_width)[:, :1].expand(1, 3, -1, -1, -1)
    assert torch.allclose(change_weights(wm, still.contiguous(), 1.0), torch.ones(2, c.tokens_per_frame))


def test_loss_with_change_weights_is_finite_and_backpropagates():
    wm = make_wm().train()
    z, actions, _ = window_inputs(wm, B=4, T=4)
    loss, _ = WorldModelLoss(change_weight=2.0)(wm, z, actions)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in wm.parameters() if p.grad is not None)


def test_a_checkpoint_config_of_before_the_loss_moved_out_reads_and_a_finer_head_is_refused():
    """Configs written while the world model's config held its training knobs (the shipped models') read: the knobs
    are set aside as a record; a model with the finer head that was removed is refused with what to do."""
    from engine.config import ConfigError, ModelConfig, split_training

    old = ModelConfig().to_dict()
    old["world_model"].update(rollout_iters=2, change_weight=1.0, shortcut_decay=1.0, head_patch=0,
                              context_noise_max=0.6, action_dropout=0.1, shortcut_fraction=0.25)
    cfg = ModelConfig.from_dict(old)
    assert cfg.world_model == ModelConfig().world_model
    assert split_training(old["world_model"])[1]["rollout_iters"] == 2
    old["world_model"]["head_patch"] = 1
    with pytest.raises(ConfigError, match="head_patch=1.*retrain"):
        ModelConfig.from_dict(old)
    old["world_model"]["head_patch"] = 0
    old["world_model"]["shortcut_fraction_typo"] = 0.3
    with pytest.raises(ConfigError, match="unknown fields"):
        ModelConfig.from_dict(old)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8])
def test_step_schedule_sums_to_one(steps):
    sched = step_schedule(steps, levels=6)
    assert len(sched) == steps
    assert sum(2.0 ** -j for j in sched) == 1.0
    assert all(0 <= j < 6 for j in sched)


def test_step_schedule_examples_and_limits():
    assert step_schedule(1, 6) == [0]
    assert step_schedule(2, 6) == [1, 1]
    assert step_schedule(3, 6) == [1, 2, 2]
    assert step_schedule(4, 6) == [2, 2, 2, 2]
    for bad in (0, 33):
        with pytest.raises(ValueError, match="sampling steps"):
            step_schedule(bad, 6)


def test_sample_shape_and_guidance_one_equals_unguided():
    wm = make_wm()
    N, Dt = wm.cfg.tokens_per_frame, wm.cfg.token_dim
    # give the zero-initialised head outputs something to do
    torch.manual_seed(3)
    with torch.no_grad():
        for p in wm.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    h = torch.randn(2, N, wm.cfg.d_model)
    actions = torch.eye(4)[:2]
    noise = torch.randn(2, N, Dt)
    with torch.no_grad():
        plain = wm.sample(h, actions, noise, steps=2)
        as_tensor = wm.sample(h, actions, noise, steps=2, guidance=torch.tensor(1.0))  # runs the batch-of-2 path
        guided = wm.sample(h, actions, noise, steps=2, guidance=3.0)
    assert plain.shape == (2, N, Dt)
    torch.testing.assert_close(as_tensor, plain, **FP32_TOL)
    assert not torch.allclose(guided, plain, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Block causality
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0, 1, 2])
def test_backbone_is_causal_over_frames(t):
    """Changing frame t+1 (latent, action, context level) leaves frames <= t exactly as they were."""
    wm = make_wm()
    z, actions, levels = window_inputs(wm, T=4)
    base = full_pass(wm, z, actions, levels)
    z2, a2, l2 = z.clone(), actions.clone(), levels.clone()
    z2[:, t + 1] += torch.randn_like(z2[:, t + 1])
    a2[:, t + 1] = 1 - a2[:, t + 1]
    l2[:, t + 1] += 0.2
    out = full_pass(wm, z2, a2, l2)
    torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
    for s in range(t + 1, 4):  # the changed frame and every later one see the change
        assert (out[:, s] - base[:, s]).abs().amax(dim=-1).min() > 1e-4, f"frame {s} did not change"


def test_tokens_of_one_frame_see_each_other():
    """Changing only the last token of frame 1 changes every token of frame 1 (not token-causal), none of frame 0."""
    wm = make_wm()
    z, actions, levels = window_inputs(wm, T=3)
    base = full_pass(wm, z, actions, levels)
    z2 = z.clone()
    z2[:, 1, :, -1, -1] += 2.0  # the last cell of frame 1 = its last token (patch 1)
    out = full_pass(wm, z2, actions, levels)
    torch.testing.assert_close(out[:, 0], base[:, 0], rtol=0, atol=1e-6)
    per_token = (out[:, 1] - base[:, 1]).abs().amax(dim=-1)  # (B, N)
    assert per_token.min() > 1e-5, "some token of frame 1 does not attend to the changed token"


# ---------------------------------------------------------------------------------------------------------------
# Time: RoPE is relative and periodic; cached stepping equals the full pass
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start", [7, 4096 - 2])  # 4094: the window straddles the temporal period's wrap
def test_backbone_depends_only_on_relative_time(start):
    wm = make_wm()
    assert wm.cfg.time_period == 4096
    z, actions, levels = window_inputs(wm, T=4)
    torch.testing.assert_close(full_pass(wm, z, actions, levels, start=start), full_pass(wm, z, actions, levels),
                               rtol=1e-4, atol=1e-4)


def test_cached_steps_equal_full_forward():
    wm = make_wm()
    z, actions, levels = window_inputs(wm, T=4)  # T == W: the ring fills exactly
    torch.testing.assert_close(cached_pass(wm, z, actions, levels), full_pass(wm, z, actions, levels), **FP32_TOL)


def test_ring_wrap_equals_forward_over_last_window_one_layer():
    """Past W frames the ring overwrites the oldest slot. With one layer a cached key depends on its own frame
    only, so frame t must equal the last frame of a full pass over frames t-W+1..t at their absolute positions.
    (With more layers, older keys carry context from before the window: a sliding cache, not a recompute.)"""
    wm = make_wm(backbone_layers=1)
    W, T = wm.cfg.context_frames, 9
    z, actions, levels = window_inputs(wm, T=T)
    cached = cached_pass(wm, z, actions, levels)
    for t in range(W, T):
        s = t - W + 1
        ref = full_pass(wm, z[:, s:t + 1], actions[:, s:t + 1], levels[:, s:t + 1], start=s)[:, -1]
        torch.testing.assert_close(cached[:, t], ref, **FP32_TOL)


@pytest.mark.parametrize("layers,T", [(2, 3), (2, 4), (1, 7)])
def test_session_context_equals_full_forward(layers, T):
    """Session.reset's per-frame backbone passes over its ring cache give the full pass's last output (no noise)."""
    torch.manual_seed(0)
    ae = Autoencoder(tiny_ae_cfg())
    wm = make_wm(backbone_layers=layers)
    spec = ActionSpec(game="test", buttons=("a", "b", "c", "d"))
    sess = Session(models=(ae, wm, spec), batch=2, context_noise=0.0, dtype="fp32", seed=0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, T, 32, 32, 3), dtype=np.uint8)
    actions = (rng.random((2, T, 4)) > 0.5).astype(np.float32)
    sess.reset(frames, actions)
    W = wm.cfg.context_frames
    s = max(0, T - W)
    with torch.no_grad():
        z = ae.encode(frames_to_tensor(torch.from_numpy(frames[:, s:]).reshape(-1, 32, 32, 3)))
        z = z.reshape(2, T - s, 4, 4, 4)  # (B, T', C, h, w)
        ref = full_pass(wm, wm.normalize(z), torch.from_numpy(actions[:, s:]), torch.zeros(2, T - s), start=s)
    torch.testing.assert_close(sess.h_last, ref[:, -1], **FP32_TOL)


# ---------------------------------------------------------------------------------------------------------------
# Tiny models can overfit a few examples
# ---------------------------------------------------------------------------------------------------------------
def test_world_model_overfits_two_windows():
    # No context corruption and no action dropout: with nothing random left in the conditioning, the flow target
    # is a function of (x_tau, tau, the memorised window), so the loss can fall far below its start (~1.3).
    torch.manual_seed(0)
    wm = WorldModel(tiny_wm_cfg()).train()
    objective = WorldModelLoss(context_noise_max=0.0, action_dropout=0.0)
    z = torch.randn(2, 4, 4, 4, 4)
    actions = torch.zeros(2, 4, 4)
    actions[:, 1:, 0] = 1
    opt = torch.optim.Adam(wm.parameters(), lr=5e-3)
    losses = []
    for _ in range(200):
        loss, _ = objective(wm, z, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-30:])
    assert last < 0.3 * first, f"loss {first:.3f} -> {last:.3f}"


def test_autoencoder_overfits_four_frames():
    torch.manual_seed(0)
    ae = Autoencoder(tiny_ae_cfg())
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    one = torch.ones_like(xx)
    frames = torch.stack([torch.stack([xx, yy, 0.5 * one]), torch.stack([yy, 1 - xx, xx * yy]),
                          torch.stack([(xx > 0.5).float(), (yy > 0.5).float(), 0.2 * one]),
                          torch.stack([1 - yy, xx, 1 - xx])])  # (4, 3, 32, 32): smooth and blocky images

    def psnr() -> float:
        with torch.no_grad():
            recon = ae.decode(ae.encode(frames)).clamp(0, 1)
        return -10 * math.log10(F.mse_loss(recon, frames).item())

    start = psnr()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = ae.loss(frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = psnr()
    assert end > start + 8 and end > 17, f"psnr {start:.1f} -> {end:.1f} dB"


def test_world_model_loss_ignores_memory_layout():
    wm = make_wm().train()
    z, actions, _ = window_inputs(wm)
    z_channels_last = z.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # same values, other strides
    assert torch.equal(z, z_channels_last) and z.stride() != z_channels_last.stride()
    torch.manual_seed(5)
    a, _ = wm(WorldModelLoss(), z, actions)      # through forward, as the training loop calls it
    torch.manual_seed(5)
    b, _ = WorldModelLoss()(wm, z_channels_last, actions)
    assert torch.equal(a, b)


def test_object_weights_favour_the_object_tokens_and_the_loss_needs_the_masks():
    wm = make_wm().train()
    c = wm.cfg
    z, actions, _ = window_inputs(wm, B=2, T=4)
    objects = torch.zeros(2, 4, c.tokens_per_frame, dtype=torch.bool)
    objects[:, :, 0] = True                                    # one token holds the avatar in every frame
    w = object_weights(objects, 3.0)
    assert w.shape == (2 * 3, c.tokens_per_frame) and torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(w[:, 0], 4 * w[:, 1])                # 1 + 3 against 1
    objective = WorldModelLoss(object_weight=3.0)
    loss, _ = objective(wm, z, actions, objects)
    assert torch.isfinite(loss)
    loss.backward()
    with pytest.raises(ValueError, match="object masks"):
        objective(wm, z, actions)
