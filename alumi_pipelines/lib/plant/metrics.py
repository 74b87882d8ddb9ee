"""Classification metrics of a risk score: ROC and PR curves and areas, Brier score, calibration.

Pure numpy: ``roc_auc``, ``roc_curve``, ``average_precision``, ``brier_score``, ``reliability_table``,
``expected_calibration_error``, and the Platt calibration of a margin (``fit_platt``, ``sigmoid``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct score's first element
    mid_rank = first_rank + (counts - 1) / 2.0
    rank_sum = mid_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    tp, fp = _counts_by_threshold(y, score)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos])


def _counts_by_threshold(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives when predicting positive for score >= each distinct score (descending)."""
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tp = np.cumsum(yy)[last_of_tie]
    fp = np.cumsum(~yy)[last_of_tie]
    return tp.astype(np.float64), fp.astype(np.float64)


def average_precision(y: np.ndarray, score: np.ndarray) -> float | None:
    """PR-AUC as average precision (sum of precision times recall increments); None without positives."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None if n_pos == 0 else 1.0
    tp, fp = _counts_by_threshold(y, score)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between predicted probability and outcome."""
    return float(np.mean((np.asarray(prob, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def reliability_table(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> list[dict[str, float | int | None]]:
    """Equal-width probability bins: count, mean predicted risk and observed frequency per bin."""
    y, prob = np.asarray(y, dtype=np.float64), np.asarray(prob, dtype=np.float64)
    which = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    table = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        table.append(
            {
                "bin_lo": b / n_bins,
                "bin_hi": (b + 1) / n_bins,
                "n": n,
                "mean_risk": float(prob[mask].mean()) if n else None,
                "observed_rate": float(y[mask].mean()) if n else None,
            }
        )
    return table


def expected_calibration_error(table: Sequence[Mapping[str, Any]]) -> float:
    """Count-weighted mean |mean risk - observed rate| over the reliability bins."""
    total = sum(row["n"] for row in table)
    if not total:
        return math.nan
    return float(sum(row["n"] * abs(row["mean_risk"] - row["observed_rate"]) for row in table if row["n"]) / total)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_platt(margin: np.ndarray, y: np.ndarray, fallback_offset: float = 0.0) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * margin + b) by Newton's method on Platt's smoothed targets.

    Without both classes there is nothing to fit: returns (1, fallback_offset).
    """
    margin, y = np.asarray(margin, dtype=np.float64), np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, float(fallback_offset)
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 1.0, float(fallback_offset)
    ridge = 1e-6

    def loss(a_: float, b_: float) -> float:
        z = a_ * margin + b_
        return float(np.sum(np.logaddexp(0.0, z) - target * z) + ridge * (a_ * a_ + b_ * b_) / 2)

    current = loss(a, b)
    for _ in range(100):
        p = sigmoid(a * margin + b)
        w = p * (1 - p)
        grad = np.array([np.sum((p - target) * margin) + ridge * a, np.sum(p - target) + ridge * b])
        hess = np.array(
            [[np.sum(w * margin * margin) + ridge, np.sum(w * margin)], [np.sum(w * margin), np.sum(w) + ridge]]
        )
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            scale /= 2
        else:
            break
        a, b, improved = na, nb, current - new
        current = new
        if improved < 1e-10:
            break
    return float(a), float(b)
