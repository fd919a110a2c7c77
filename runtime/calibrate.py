"""The self-calibrated judge: a decision threshold on the image score (map max) from the normal shots alone.

Used when a bundle has no LLM (the lite bundle). Nothing here ever sees a defective example, and no
threshold is typed in by a user; the only constants are the rule's, fixed in code and documented below.

Rule (`calibrate`):
- 2 or more shots: leave-one-out. Each shot is scored against a bank made of the other shots, exactly
  as a frame is scored on the line (same bank map, score = map max). These are samples of "how unusual
  does a normal part look against this product's normal shots". threshold = LOO_MARGIN * median(LOO).
  The median, not the max: one odd shot (another tray position, a near-duplicate) must not move the
  threshold; the margin covers the normal variation that a handful of LOO samples cannot show.
- 1 shot: no other shot to leave out, so the shot's own augmented copies stand in for new normal parts
  (small rotation, shift, scale, brightness and contrast changes, as a line camera sees them; no flips:
  a product can have a handedness). Each copy is scored against the bank of the shot itself;
  threshold = AUG_MARGIN * median(scores). A copy of the same part is closer to its bank than a new
  part would be, hence the larger margin.

How the margins were chosen (normal images only): on the cookie set's train/good split, random draws of
k shots, the held-out train/good images were scored against the k-shot bank and the margin was set so
that about 10% of those held-out NORMAL images fall above the threshold, for k = 1 and for k = 3..8.
Test images and defects played no part. With 2 shots the LOO median is the mean of two scores against
one-image banks, which overstates the normal spread; the rule is kept as is (reported, not tuned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .maps import bank_map, l2_rows

LOO_MARGIN = 1.2
AUG_MARGIN = 2.0
N_AUG = 8
AUG_SEED = 0  # fixed: the same shots always give the same threshold

MapFn = Callable[..., np.ndarray]


def _bank(shots: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per tap: the shots' rows stacked and L2-normalised (once, not per query)."""
    return [l2_rows(np.concatenate([np.asarray(s[k], np.float32).reshape(-1, np.shape(s[k])[-1]) for s in shots])) for k in range(len(shots[0]))]


def _score(query: Sequence[np.ndarray], bank: list[np.ndarray], grids, map_fn: MapFn) -> float:
    if map_fn is bank_map:
        return float(bank_map(list(query), bank, grids, normalised_bank=True).max())
    return float(np.max(map_fn(list(query), bank, grids)))


def loo_scores(taps_per_shot: Sequence[Sequence[np.ndarray]], grids, map_fn: MapFn = bank_map) -> list[float]:
    """Score of each shot against a bank of all the other shots."""
    n = len(taps_per_shot)
    if n < 2:
        raise ValueError("leave-one-out needs at least 2 shots")
    return [_score(taps_per_shot[i], _bank([s for j, s in enumerate(taps_per_shot) if j != i]), grids, map_fn) for i in range(n)]


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible new view of the same part: rotation +-6 deg, shift +-4%, scale +-4%, gain/offset +-8%.

    Borders are filled by reflection so no black wedge (itself an 'anomaly') is introduced.
    """
    import cv2

    h, w = image.shape[:2]
    angle = rng.uniform(-6.0, 6.0)
    scale = rng.uniform(0.96, 1.04)
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[0, 2] += rng.uniform(-0.04, 0.04) * w
    m[1, 2] += rng.uniform(-0.04, 0.04) * h
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    gain, offset = rng.uniform(0.92, 1.08), rng.uniform(-0.08, 0.08) * 255.0
    return np.clip(out.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def augmented_views(image: np.ndarray, n: int = N_AUG, seed: int = AUG_SEED) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [augment(image, rng) for _ in range(n)]


def calibrate(
    taps_per_shot: Sequence[Sequence[np.ndarray]],
    grids: Sequence[tuple[int, int]],
    map_fn: MapFn = bank_map,
    aug_taps: Sequence[Sequence[np.ndarray]] | None = None,
) -> dict:
    """{threshold, method, judge, loo_scores | aug_scores, margin, n_shots}: stored in pack meta 'calibration'.

    taps_per_shot: per shot, its taps [(N_k, W_k)]. aug_taps: with a single shot, the taps of its augmented
    views (`augmented_views(image)` through the same encoder); without them a single shot cannot be calibrated.
    """
    grids = [tuple(int(v) for v in g) for g in grids]
    n = len(taps_per_shot)
    if n == 0:
        return {}
    if n >= 2:
        scores = loo_scores(taps_per_shot, grids, map_fn)
        return {
            "judge": "calibrated-score", "method": "loo-median", "margin": LOO_MARGIN, "n_shots": n,
            "threshold": LOO_MARGIN * float(np.median(scores)), "loo_scores": scores,
        }
    if not aug_taps:
        return {"judge": "calibrated-score", "method": "none", "n_shots": 1, "threshold": None,
                "reason": "one shot and no augmented views: add shots or calibrate with its image"}
    bank = _bank(taps_per_shot)
    scores = [_score(a, bank, grids, map_fn) for a in aug_taps]
    return {
        "judge": "calibrated-score", "method": "augmented-median", "margin": AUG_MARGIN, "n_shots": 1,
        "threshold": AUG_MARGIN * float(np.median(scores)), "aug_scores": scores,
    }


def calibrate_images(images: Sequence[np.ndarray], taps_fn: Callable[[np.ndarray], list[np.ndarray]], grids,
                     map_fn: MapFn = bank_map, taps_per_shot: Sequence[Sequence[np.ndarray]] | None = None) -> dict:
    """Convenience for pack builders: taps through `taps_fn`, augmented views when there is one shot."""
    if taps_per_shot is None:
        taps_per_shot = [taps_fn(img) for img in images]
    aug = [taps_fn(v) for v in augmented_views(images[0])] if len(images) == 1 else None
    return calibrate(taps_per_shot, grids, map_fn, aug)
