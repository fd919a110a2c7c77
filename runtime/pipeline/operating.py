"""Operating points: ROC points of labelled values and the threshold that `agpt bank tune` picks.

The verdict at an operating point is `value > threshold` (value: P(anomaly) for LLM bundles, the image score
for lite ones), the same strict rule as the model's own P(Yes) > 0.5. Candidate thresholds are the midpoints
between consecutive distinct values (and one below the lowest, one above the highest), so a picked threshold
never sits on a tuning image's value and small score noise on the line does not flip that image.

Rule (pick_threshold):
- with max_miss_rate R: among thresholds whose miss rate (defective judged good) on the data is <= R, the
  one with the fewest false rejects (good judged defective); ties: the highest such threshold;
- without: the threshold with the highest accuracy; ties: the one farthest from both neighbouring values
  (the middle of the widest gap), then the highest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_ROC_POINTS = 256  # stored in the pack's evidence


def candidates(values: Sequence[float]) -> np.ndarray:
    v = np.unique(np.asarray(values, np.float64))
    if v.size == 0:
        return np.array([0.5])
    mids = (v[1:] + v[:-1]) / 2.0
    step = max(float(v[-1] - v[0]), 1e-6) * 1e-3
    return np.concatenate([[v[0] - step], mids, [v[-1] + step]])


def rates(values: Sequence[float], labels: Sequence[bool], thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per threshold: fpr (false-reject rate of the good), tpr (defects caught), miss rate, accuracy."""
    v = np.asarray(values, np.float64)
    y = np.asarray(labels, bool)
    pred = v[None, :] > np.asarray(thresholds, np.float64)[:, None]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    correct = (pred == y).sum(1)
    return {"fpr": fp / n_neg, "tpr": tp / n_pos, "miss": 1.0 - tp / n_pos, "accuracy": correct / max(v.size, 1)}


def roc_points(values: Sequence[float], labels: Sequence[bool], limit: int = MAX_ROC_POINTS) -> list[list[float]]:
    """[[fpr, tpr, threshold], ...] from the strictest threshold to the loosest (at most `limit` points)."""
    t = candidates(values)[::-1]
    r = rates(values, labels, t)
    pts = np.stack([r["fpr"], r["tpr"], t], axis=1)
    if len(pts) > limit:
        pts = pts[np.unique(np.linspace(0, len(pts) - 1, limit).round().astype(int))]
    return [[round(float(a), 6), round(float(b), 6), float(c)] for a, b, c in pts]


def pick_threshold(values: Sequence[float], labels: Sequence[bool], max_miss_rate: float | None = None) -> dict:
    """{threshold, accuracy, false_reject_rate, miss_rate, rule}; see the module's rule."""
    v = np.asarray(values, np.float64)
    y = np.asarray(labels, bool)
    if y.all() or not y.any():
        raise ValueError("an operating point needs good and defective examples")
    t = candidates(v)
    r = rates(v, y, t)
    uniq = np.unique(v)
    # margin of each candidate: distance to the nearest value (the middle of the widest gap wins ties)
    margin = np.min(np.abs(t[:, None] - uniq[None, :]), axis=1)
    if max_miss_rate is not None:
        ok = r["miss"] <= max_miss_rate + 1e-12
        if not ok.any():  # cannot happen: the lowest candidate catches every defect; belt and braces
            ok = t == t.min()
        key = np.lexsort((t, -r["fpr"]))  # last = fewest false rejects, then highest threshold
        i = next(int(k) for k in key[::-1] if ok[k])
        chosen_by = f"fewest false rejects with miss rate <= {max_miss_rate}"
    else:
        i = int(np.lexsort((t, margin, r["accuracy"]))[-1])
        chosen_by = "highest accuracy"
    return {
        "threshold": float(t[i]),
        "accuracy": float(r["accuracy"][i]),
        "false_reject_rate": float(r["fpr"][i]),
        "miss_rate": float(r["miss"][i]),
        "chosen_by": chosen_by,
    }
