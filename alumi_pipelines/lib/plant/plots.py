"""PNG plots of a defect-risk evaluation: ROC curves, reliability diagram, top feature contributions.

matplotlib is imported where used (Agg canvas, no pyplot state).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], per_type: Mapping[str, Mapping[str, Any]]) -> bytes:
    """ROC curve per defect type, PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for t, (fpr, tpr) in curves.items():
        auc = per_type[t]["roc_auc"]
        ax.plot(fpr, tpr, label=f"{t} (AUC {auc:.2f})" if auc is not None else f"{t} (AUC n/a)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Defect risk: ROC on hold-out days")
    ax.legend(loc="lower right", fontsize=8)
    return _png(figure)


def plot_reliability(per_type: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Reliability diagram (observed rate against mean predicted risk per bin) per defect type, PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for t, metrics in per_type.items():
        rows = [r for r in metrics["reliability"] if r["n"]]
        label = f"{t} (Brier {metrics['brier']:.3f})"
        ax.plot([r["mean_risk"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted risk", ylabel="observed defect rate", title="Calibration")
    ax.legend(loc="upper left", fontsize=8)
    return _png(figure)


def plot_contributions(per_type: Mapping[str, Mapping[str, Any]], top: int = 8) -> bytes:
    """Mean |contribution| of the top features per defect type (XGBoost pred_contribs), PNG."""
    from matplotlib.figure import Figure

    n = len(per_type)
    figure = Figure(figsize=(4 * n, 4), layout="constrained")
    for i, (t, metrics) in enumerate(per_type.items()):
        ax = figure.add_subplot(1, n, i + 1)
        items = list(metrics["mean_abs_contribution"].items())[:top][::-1]
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_title(t)
        ax.set_xlabel("mean |contribution| (log-odds)")
        ax.tick_params(axis="y", labelsize=7)
    return _png(figure)
