"""The self-calibrated judge: a decision threshold on the image score (map max) from the normal shots alone.

Used when a bundle has no LLM (the lite bundle). Nothing here ever sees a defective example, and no
threshold is typed in by a user; the only constants are the rule's, fixed in code and documented below.

Rule (`calibrate`):
- 3 or more shots: leave-one-out. Each shot is scored against a bank made of the other shots, exactly
  as a frame is scored on the line (same bank map, score = map max). These are samples of "how unusual
  does a normal part look against this product's normal shots". threshold = LOO_MARGIN * median(LOO).
  The median, not the max: one odd shot (another tray position, a near-duplicate) must not move the
  threshold, and a median resists one odd value only from 3 values on. The margin covers the normal
  variation that a handful of LOO samples cannot show.
  Near-duplicate shots (two photos of the same part) would make each other look perfectly normal and drag
  the median down, so they are counted once: shots i, j whose one-to-one score is below DUP_FRACTION of
  the median one-to-one score between shots are grouped and only the first of a group stays in the LOO.
- fewer than 3 distinct shots: their own augmented copies stand in for new normal parts (small rotation, shift,
  scale, brightness and contrast changes, as a line camera sees them; no flips: a product can have a
  handedness). Each copy is scored against the bank of all shots; threshold = AUG_MARGIN * median.
  A copy of a part is closer to the bank holding that part than a new part would be: a larger margin.

How the margins were chosen (normal images only): on the cookie set's train/good split, random draws of
k shots; the held-out train/good images were scored against the k-shot bank, and each margin was set
so that about 10% of those held-out NORMAL images score above the threshold (k = 1 for AUG_MARGIN,
k = 3..8 for LOO_MARGIN). Test images and defective images played no part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from runtime.pipeline.maps import bank_map, l2_rows

LOO_MARGIN = 1.2
AUG_MARGIN = 2.0
N_AUG = 8  # augmented views per shot (1 or 2 shots)
MIN_LOO_SHOTS = 3
DUP_FRACTION = 0.5  # "closer than half the typical distance between two shots": the same part twice
AUG_SEED = 0  # fixed: the same shots always give the same threshold


def _bank(shots: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per tap: the shots' rows stacked and L2-normalised (once, not per query)."""
    return [
        l2_rows(np.concatenate([np.asarray(s[k], np.float32).reshape(-1, np.shape(s[k])[-1]) for s in shots]))
        for k in range(len(shots[0]))
    ]


def _score(query: Sequence[np.ndarray], bank: list[np.ndarray], grids) -> float:
    """A frame's image score on the line: the bank map's max."""
    return float(bank_map(list(query), bank, grids, normalised_bank=True).max())


def loo_scores(taps_per_shot: Sequence[Sequence[np.ndarray]], grids) -> list[float]:
    """Score of each shot against a bank of all the other shots."""
    n = len(taps_per_shot)
    if n < 2:
        raise ValueError("leave-one-out needs at least 2 shots")
    return [_score(taps_per_shot[i], _bank([s for j, s in enumerate(taps_per_shot) if j != i]), grids) for i in range(n)]


def distinct_shots(taps_per_shot: Sequence[Sequence[np.ndarray]], grids) -> list[int]:
    """Indices of the shots left after grouping near-duplicates (first of each group kept)."""
    n = len(taps_per_shot)
    if n < 3:
        return list(range(n))
    banks = [_bank([s]) for s in taps_per_shot]
    pair = np.array([[_score(taps_per_shot[i], banks[j], grids) if i != j else np.nan for j in range(n)] for i in range(n)])
    pair = np.fmax(pair, pair.T)  # a pair is a duplicate only when each explains the other
    typical = float(np.nanmedian(pair))
    keep: list[int] = []
    for i in range(n):
        if all(not (pair[i, j] < DUP_FRACTION * typical) for j in keep):
            keep.append(i)
    return keep


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
    aug_taps: Sequence[Sequence[np.ndarray]] | None = None,
    keep: list[int] | None = None,
) -> dict:
    """{threshold, method, judge, margin, n_shots, loo_scores | aug_scores}: stored in pack meta 'calibration'.

    taps_per_shot: per shot, its taps [(N_k, W_k)]. aug_taps: with fewer than 3 shots, the taps of the shots'
    augmented views (`augmented_views(image)` through the same encoder); without them the judge has no threshold.
    keep: distinct_shots() when the caller has already worked it out (it costs n x (n-1) bank maps).
    """
    grids = [tuple(int(v) for v in g) for g in grids]
    n = len(taps_per_shot)
    if n == 0:
        return {}
    keep = distinct_shots(taps_per_shot, grids) if keep is None else keep
    if len(keep) >= MIN_LOO_SHOTS:
        scores = loo_scores([taps_per_shot[i] for i in keep], grids)
        return {
            "judge": "calibrated-score",
            "method": "loo-median",
            "margin": LOO_MARGIN,
            "n_shots": n,
            "threshold": LOO_MARGIN * float(np.median(scores)),
            "loo_scores": scores,
            "distinct_shots": keep,
        }
    if not aug_taps:
        return {
            "judge": "calibrated-score",
            "method": "none",
            "n_shots": n,
            "threshold": None,
            "reason": f"{n} shot(s) and no augmented views: add shots or calibrate with the images",
        }
    bank = _bank(taps_per_shot)
    scores = [_score(a, bank, grids) for a in aug_taps]
    return {
        "judge": "calibrated-score",
        "method": "augmented-median",
        "margin": AUG_MARGIN,
        "n_shots": n,
        "threshold": AUG_MARGIN * float(np.median(scores)),
        "aug_scores": scores,
    }


def calibrate_images(
    images: Sequence[np.ndarray],
    taps_fn: Callable[[np.ndarray], list[np.ndarray]],
    grids,
    taps_per_shot: Sequence[Sequence[np.ndarray]] | None = None,
) -> dict:
    """What a pack builder calls: taps through `taps_fn`, plus augmented views when there are fewer than 3 shots."""
    if not images:
        return {}
    if taps_per_shot is None:
        taps_per_shot = [taps_fn(img) for img in images]
    aug = None
    keep = distinct_shots(taps_per_shot, grids)
    if len(keep) < MIN_LOO_SHOTS:
        aug = [taps_fn(v) for i in keep for v in augmented_views(images[i], seed=AUG_SEED + i)]
    return calibrate(taps_per_shot, grids, aug, keep)
