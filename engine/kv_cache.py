"""The ring-buffer KV cache of the real-time backbone: W frames of keys and values, preallocated, never grown.

Frame t goes to slot t mod W; `valid` says which slots hold a frame (all of them once W frames were appended).
Memory and per-frame cost stay constant however long a world runs, and every index is a device tensor, so an
append can be captured in a CUDA graph. RoPE angles are periodic in the frame counter (engine.transformer.Rope3D),
so cached keys never need re-rotating when the counter wraps the ring (a world moved to another ring position is
re-rotated once, by engine.slots). Validity is per world: a world loaded into a slot may hold fewer frames than the
ring, and the host knows from which append on every world's ring is full again (`full`) without a device sync.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


class RingKVCache:
    """Keys and values (L, B, H, W*N, hd), slot validity (B, W) and the frame counter of B worlds."""

    STATE = ("k", "v", "valid", "count")

    def __init__(self, layers: int, batch: int, heads: int, frames: int, tokens_per_frame: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.frames, self.tokens = frames, tokens_per_frame
        shape = (layers, batch, heads, frames * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, frames, dtype=torch.bool, device=device)   # (B, W)
        self.count = torch.zeros((), dtype=torch.long, device=device)              # frames appended since clear
        self.appended = 0  # the same count on the host: whether the ring is full is known without a device sync
        self.filled_at = frames  # the host count from which every slot of every world holds a frame
        self._offsets = torch.arange(tokens_per_frame, device=device)

    @property
    def full(self) -> bool:
        """Whether every slot of every world holds a frame (in-place attention then needs no mask). A closed slot's
        cleared ring (engine.slots) is not counted: what it attends shapes only its own frames, which reach no one."""
        return self.appended >= self.filled_at

    def mark_holes(self) -> None:
        """Some world's ring has empty slots now (a world loaded into a slot): W more appends fill every slot."""
        self.filled_at = max(self.filled_at, self.appended + self.frames)

    def sync_host(self) -> None:
        """Read the host's counts back from the device tensors (after they were overwritten: a loaded save-game)."""
        self.appended = int(self.count)
        self.filled_at = self.frames if bool(self.valid.all()) else self.appended + self.frames

    def slot(self) -> torch.Tensor:
        """The slot the next frame goes to, () long on the device."""
        return self.count.remainder(self.frames)

    def write_index(self) -> torch.Tensor:
        """Token columns (N,) of the next frame's slot."""
        return self.slot() * self.tokens + self._offsets

    def mask(self, with_next: bool, full: bool | None = None) -> torch.Tensor | None:
        """Additive attention mask (B, 1, 1, W*N) float32 over the valid slots.

        with_next=True: the next slot counts as written (in-place attention; None once the ring is `full`, when every
        slot is valid). False: the next slot is masked out, its old frame leaving the window (read-only attention).
        """
        if with_next and (self.full if full is None else full):
            return None
        hot = torch.arange(self.frames, device=self.valid.device) == self.slot()  # (W,)
        keep = (self.valid | hot) if with_next else (self.valid & ~hot)          # (B, W)
        keep = keep.repeat_interleave(self.tokens, dim=1)                          # (B, W*N)
        return torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, NEG_INF)[:, None, None]

    def append(self, k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None) -> None:
        """Mark the next slot written and advance the counter; k_new/v_new (L, B, H, N, hd) are written into the slot
        unless the backbone already wrote them in place (None)."""
        if k_new is not None:
            idx = self.write_index()
            self.k.index_copy_(3, idx, k_new.to(self.k.dtype))
            self.v.index_copy_(3, idx, v_new.to(self.v.dtype))
        self.valid.index_fill_(1, self.slot().reshape(1), True)
        self.count.add_(1)
        self.appended += 1

    def clear(self) -> None:
        for t in (self.k, self.v, self.valid, self.count):
            t.zero_()
        self.appended, self.filled_at = 0, self.frames

    def state(self) -> dict[str, torch.Tensor]:
        """The cache as CPU tensors."""
        return {name: getattr(self, name).detach().cpu().clone() for name in self.STATE}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.STATE:
            getattr(self, name).copy_(tensors[name].to(getattr(self, name).device))
        self.sync_host()
