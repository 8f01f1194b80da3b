"""Fused Triton kernels beside their PyTorch references (planned)."""
