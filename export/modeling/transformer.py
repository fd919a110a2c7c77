"""The pre-norm transformer block both ImageBind towers use, written out batch-first.

ImageBind runs nn.MultiheadAttention sequence-first (L,B,D); the arithmetic here is the same per token,
only the layout differs, and batch-first exports to plainer ONNX (no transposes around every block).
Weights keep ImageBind's names (attn.in_proj_weight, norm_1, mlp.fc1, ...) so a block's state dict is
the checkpoint's slice with the 'modality_trunks.X.blocks.i.' prefix removed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # ImageBind uses eps 1e-6 in every LayerNorm (trunks and heads)


def heads_for_width(width: int) -> int:
    """Number of attention heads for a tower of width D; it is not stored in the checkpoint.

    Real ImageBind-Huge: vision D=1280 -> 16 heads of 80, text D=1024 -> 16 heads of 64.
    The tiny test towers (D=64 vision, D=32 text) use 4 heads. Rule: 16 if D >= 512 else 4.
    Pass heads= explicitly to from_state for any other checkpoint.
    """
    return 16 if width >= 512 else 4


class Attention(nn.Module):
    """nn.MultiheadAttention's math: fused in_proj (3D,D)+bias -> per-head softmax(q k^T / sqrt(hd) + mask) v -> out_proj."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        hd = D // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(D, dim=-1)
        # (B, L, D) -> (B, heads, L, hd)
        q, k, v = (t.reshape(B, L, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        # MultiheadAttention scales q before the product; same result as scaling the scores.
        att = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1)
        if mask is not None:
            att = att + mask  # additive: 0 where allowed, -inf where not
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, L, D)
        return self.out_proj(y)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as nn.GELU() defaults to


class Block(nn.Module):
    """x += attn(norm_1(x)); x += mlp(norm_2(x)). No dropout, no drop-path, no layer scale (inference)."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.norm_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads)
        self.norm_2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), mask)
        return x + self.mlp(self.norm_2(x))


def l2_normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ||x||, as ImageBind's Normalize (F.normalize with eps 1e-12; never reached for real embeddings)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0
