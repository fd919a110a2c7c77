"""The figures of `agpt eval`: image and pixel AUROC by ranks, mean and std over the draws, and where the
model's own decision sits on the ROC curve (runtime.pipeline.operating holds the operating-point picking)."""

from __future__ import annotations

import numpy as np


def auroc(scores, labels) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U): tied scores share their average rank.

    Equals P(score of a random positive > score of a random negative) + 0.5 * P(tie). NaN when a class is absent.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.shape[0]} scores for {y.shape[0]} labels")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # groups of equal scores: 1-based average rank of each group, spread back to its members
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    counts = np.diff(np.r_[starts, s.size])
    avg_rank = starts + (counts + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg_rank, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def summary(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and x == x], np.float64)  # NaN: a class absent; None: no masks
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std())}


def own_decision_point(values, labels, verdicts) -> list[float] | None:
    """(fpr, tpr) of the model's own verdicts, for the ROC panel (a frame without a verdict counts as 'good')."""
    y = np.asarray(labels, bool)
    pred = np.array([bool(v) for v in verdicts])
    if y.all() or not y.any():
        return None
    return [float((pred & ~y).sum() / (~y).sum()), float((pred & y).sum() / y.sum())]
