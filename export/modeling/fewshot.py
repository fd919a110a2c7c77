"""AnomalyGPT's few-shot map (reference doc, section 5), in torch: the oracle for runtime/maps.bank_map.

Per tap k: S_k[p] = max_j cos(Q_k[p], Bank_k[j]) over all patches of all normal shots (raw taps, CLS
dropped, no projection). S = mean over taps; reshape to the grid; bilinear upsample to 224
(align_corners=True); M_fs = 1 - S. Upsampling each tap then averaging is the same map (linear ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from export.modeling.decoder import _grid
from export.modeling.transformer import l2_normalise


def bank_from_shots(shot_taps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shot taps [(k,N,W)] -> bank [(k*N, W)]."""
    return [t.reshape(-1, t.shape[-1]) for t in shot_taps]


def bank_map(
    query_taps: list[torch.Tensor], bank: list[torch.Tensor], size: int = 224, normalised_bank: bool = False
) -> torch.Tensor:
    """query taps [(B,N,W)], bank [(M,W)] (already L2-normalised per row when normalised_bank) -> M_fs (B,1,size,size)."""
    sims = []
    for q, b in zip(query_taps, bank):
        cos = l2_normalise(q) @ (b if normalised_bank else l2_normalise(b)).transpose(0, 1)  # (B,N,M)
        sims.append(cos.max(dim=-1).values)  # (B,N)
    s = torch.stack(sims).mean(dim=0)  # (B,N)
    B, N = s.shape
    h, w = _grid(N)
    s = F.interpolate(s.reshape(B, 1, h, w), size=(size, size), mode="bilinear", align_corners=True)
    return 1.0 - s
