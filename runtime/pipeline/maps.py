"""Anomaly maps in numpy: the normal-shot bank map (reference doc, section 5) and the 3x3 location.

Per tap: S[p] = max_j cos(Q[p], Bank[j]), 1 - S reshaped to the tap's grid and upsampled to 224
(bilinear, align_corners=True), then the mean over taps. The reference averages the taps first and
upsamples once; both are linear and all its taps share the 16x16 grid, so the two are the same map,
and this order also serves the lite encoder whose taps have different grids.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from runtime.pipeline.prompt import cell_position


@lru_cache(maxsize=16)
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True."""
    w = np.zeros((n_out, n_in), np.float32)
    if n_in == 1:
        w[:, 0] = 1.0
        return w
    pos = np.arange(n_out, dtype=np.float64) * (n_in - 1) / max(n_out - 1, 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def upsample(grid_map: np.ndarray, size: int = 224) -> np.ndarray:
    """Bilinear, align_corners=True, of a (h,w) or (B,h,w) map: separable, so two small matmuls."""
    h, w = grid_map.shape[-2:]
    return _interp_matrix(h, size) @ grid_map.astype(np.float32) @ _interp_matrix(w, size).T


def l2_rows(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def bank_map(
    query_taps: list[np.ndarray],
    bank: list[np.ndarray],
    grids: list[tuple[int, int]],
    size: int = 224,
    normalised_bank: bool = False,
) -> np.ndarray:
    """(size,size) map in [0,2] (1 - cosine), from one image's taps [(N_k,W_k)] and a bank [(M_k,W_k)]."""
    out = np.zeros((size, size), np.float32)
    for q, b, (gh, gw) in zip(query_taps, bank, grids):
        b = b if normalised_bank else l2_rows(b)
        sim = (l2_rows(q) @ b.T).max(axis=1)
        out += upsample((1.0 - sim).reshape(gh, gw), size)
    return out / len(query_taps)


def peak_location(m: np.ndarray) -> str:
    """3x3 cell name of the map's maximum: the threshold-free location used by the fast verdict."""
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return cell_position(float(r), float(c), size=m.shape[0])
