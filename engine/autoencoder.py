"""Convolutional autoencoder: frame (B, 3, H, W) in [0, 1] <-> latent grid (B, C, H/f, W/f) in [-1, 1].

The decoder runs for every displayed frame, so it is small and norm-free (TAESD-style, Bohan 2023) and is trained
with noise on its input latent so that it tolerates the world model's imperfect latents. The loss is MSE + L1 plus
an L1 on FFT magnitudes, which keeps edges sharp without any downloaded perceptual network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import AutoencoderConfig


class ResBlock(nn.Module):
    """conv3x3 -> SiLU -> conv3x3, plus the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """Frame -> latent: a stem, then per stage a residual block and a strided patchify conv; tanh bounds it."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.encoder_channels
        self.stem = nn.Conv2d(3, ch[0], 3, padding=1)
        stages = []
        for i, s in enumerate(cfg.strides):
            out = ch[min(i + 1, len(ch) - 1)]
            stages += [ResBlock(ch[i]), nn.Conv2d(ch[i], out, kernel_size=s, stride=s)]
        self.stages = nn.Sequential(*stages)
        self.out = nn.Sequential(ResBlock(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.latent_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x * 2.0 - 1.0))  # (B, C_enc, h, w)
        return torch.tanh(self.out(x))             # (B, C, h, w)


class Decoder(nn.Module):
    """Latent -> frame: per stage residual blocks then nearest upsampling and a conv; the last stage upsamples by
    sub-pixel convolution (pixel shuffle, Shi et al. 2016) so no conv runs at full resolution. No norms."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, strides = cfg.decoder_channels, cfg.strides[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, s in enumerate(strides):
            layers += [ResBlock(ch[i]) for _ in range(cfg.decoder_blocks)]
            if i < len(strides) - 1:
                layers += [nn.Upsample(scale_factor=s, mode="nearest"), nn.Conv2d(ch[i], ch[i + 1], 3, padding=1),
                           nn.SiLU()]
            else:
                layers += [nn.SiLU(), nn.Conv2d(ch[i], 3 * s * s, 3, padding=1), nn.PixelShuffle(s)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(self.conv_in(z))  # (B, 3, H, W), about [0, 1]


class Autoencoder(nn.Module):
    """Encoder + decoder with the training loss."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, C, h, w)."""
        return self.encoder(frames)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 3, H, W) float, not clamped."""
        return self.decoder(z)

    def forward(self, frames: torch.Tensor, previous: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(frames, previous)

    def loss(self, frames: torch.Tensor, previous: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE + L1 + FFT-magnitude L1 of the reconstruction from a latent with random-level noise added.

        The noise std is drawn in [0, decoder_noise] relative to the batch's latent std. The squared term
        carries the weight: game frames are small sprites on flat backgrounds, and with L1 dominant the
        reconstruction settles on the background (L1's optimum is the median) and never learns the sprites.

        With `previous` (the frames one step earlier) and `cfg.change_weight` > 0, the MSE and L1 terms weigh each
        pixel by 1 + change_weight where it changed from the previous frame (`changed_pixels`), scaled so the
        weights average 1 over the batch: a 2x4-pixel ball is a thousandth of a Breakout frame, and on a uniform
        loss erasing it costs less than a slightly wrong brick colour. The stats then also report the PSNR over
        the changed pixels and their recall (`small_object_metrics`).
        """
        z = self.encode(frames)
        sigma = torch.rand(z.shape[0], 1, 1, 1, device=z.device) * self.cfg.decoder_noise * z.detach().std()
        recon = self.decode(z + sigma * torch.randn(z.shape, device=z.device, dtype=z.dtype))
        err = recon - frames
        c = self.cfg
        if previous is not None and c.change_weight > 0:
            w = 1.0 + c.change_weight * changed_pixels(frames, previous).to(err.dtype)   # (B, 1, H, W)
            w = w / w.mean()
            mse, l1 = (w * err.square()).mean(), (w * err.abs()).mean()
        else:
            mse, l1 = err.square().mean(), err.abs().mean()
        freq = (torch.fft.rfft2(recon.float()).abs() - torch.fft.rfft2(frames.float()).abs()).abs().mean()
        freq = freq / (frames.shape[-1] * frames.shape[-2]) ** 0.5
        total = c.mse_loss_weight * mse + c.l1_loss_weight * l1 + c.freq_loss_weight * freq
        with torch.no_grad():
            psnr = -10.0 * torch.log10(F.mse_loss(recon.clamp(0, 1), frames).clamp_min(1e-10))
            stats = {"mse": mse.detach(), "l1": l1.detach(), "freq": freq.detach(), "psnr": psnr}
            if previous is not None:
                stats.update(small_object_metrics(recon, frames, previous))
        # detached device tensors: the training loop sums them on the device and reads them back at log time
        return total, stats


CHANGE_THRESHOLD = 0.05    # a pixel changed when a channel moved by more than this (13 of 255)
RECALL_TOLERANCE = 0.1     # a changed pixel is kept when every channel of its reconstruction is this close (26 of 255)


def changed_pixels(frames: torch.Tensor, previous: torch.Tensor, threshold: float = CHANGE_THRESHOLD) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels of frames (B, 3, H, W) in [0, 1] where a channel differs from `previous` by more
    than `threshold`: where something moved, appeared or vanished (a ball's old and new place)."""
    return ((frames - previous).abs().amax(dim=1, keepdim=True) > threshold)


def small_object_metrics(recon: torch.Tensor, frames: torch.Tensor, previous: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reconstruction quality where the frame changed from the previous one, which is where small moving things are.

    changed_psnr    PSNR over the changed pixels only (all channels), from the clamped reconstruction
    changed_recall  share of changed pixels whose reconstruction is within RECALL_TOLERANCE in every channel
    changed_share   share of pixels that changed (how much the two numbers above rest on)
    A frame that erases a 2x4-pixel ball loses about a thousandth of its plain PSNR's error budget but half of its
    changed pixels' recall. With no changed pixel in the batch, the first two are NaN (nothing to measure).
    All are 0-d device tensors (no sync).
    """
    mask = changed_pixels(frames, previous)                                     # (B, 1, H, W)
    n = mask.sum()
    err = (recon.clamp(0, 1) - frames).float()
    mse = (err.square() * mask).sum() / (3 * n).clamp_min(1)
    kept = ((err.abs().amax(dim=1, keepdim=True) <= RECALL_TOLERANCE) & mask).sum()
    nan = torch.full((), float("nan"), device=frames.device)
    return {"changed_psnr": torch.where(n > 0, -10.0 * torch.log10(mse.clamp_min(1e-10)), nan),
            "changed_recall": torch.where(n > 0, kept / n.clamp_min(1), nan),
            "changed_share": mask.float().mean()}


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    return frames.movedim(-1, -3).float().div_(255.0)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) -> uint8 (..., H, W, 3), rounded and clamped."""
    return x.clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8).movedim(-3, -1)
