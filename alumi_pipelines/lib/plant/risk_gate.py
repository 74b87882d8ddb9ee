"""The promotion rule of the defect-risk model: may a challenger replace the champion?

The challenger must beat both baselines (majority class, best single-threshold rule) on the hold-out
days by a clear margin in macro PR-AUC and in macro ROC-AUC, and its macro PR-AUC must be at least the
champion's minus a tolerance on the same days. PR-AUC leads the champion comparison because defects
are rare and it rewards ranking the few risky parts first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alumi_pipelines.lib.training.gate import GateDecision

MARGIN_KEYS = ("pr_auc_vs_majority", "pr_auc_vs_threshold_rule", "roc_auc_vs_majority", "roc_auc_vs_threshold_rule")


@dataclass(frozen=True)
class RiskGateRule:
    baseline_margin: float = 0.05  # macro PR-AUC and ROC-AUC must exceed each baseline's by this much
    tolerance: float = 0.01  # challenger macro PR-AUC may trail the champion's by this much (negative: must beat it)

    def __post_init__(self) -> None:
        for name in ("baseline_margin", "tolerance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"risk gate rule {name}={value!r}: must be a finite number")

    def as_dict(self) -> dict[str, float]:
        return {"baseline_margin": self.baseline_margin, "tolerance": self.tolerance}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def decide_risk_promotion(
    margins: Mapping[str, float | None],
    challenger_macro: Mapping[str, Any],
    champion_macro: Mapping[str, Any] | None,
    rule: RiskGateRule,
) -> GateDecision:
    """Apply the rule to margins_over_baselines output and the macro metrics of challenger and champion."""
    criteria: list[dict[str, Any]] = []
    reasons: list[str] = []

    def record(name: str, passed: bool, detail: str) -> None:
        criteria.append({"name": name, "passed": passed, "detail": detail})
        if not passed:
            reasons.append(f"{name}: {detail}")

    for key in MARGIN_KEYS:
        margin = margins.get(key)
        metric, baseline = key.split("_vs_")
        if margin is None:
            record(key, False, f"{metric} cannot be computed on the hold-out days (no defect type has both classes)")
        else:
            record(
                key,
                margin >= rule.baseline_margin,
                f"model {metric} minus {baseline} {metric} is {_fmt(margin)}, needs >= {rule.baseline_margin:+.4f}",
            )
    new = challenger_macro.get("pr_auc")
    if champion_macro is None:
        criteria.append({"name": "champion", "passed": True, "detail": "no champion yet: baselines decide"})
    else:
        old = champion_macro.get("pr_auc")
        if new is None or old is None:
            record("vs_champion", False, f"macro PR-AUC not comparable (challenger {new}, champion {old})")
        else:
            record(
                "vs_champion",
                new >= old - rule.tolerance,
                f"challenger macro PR-AUC {new:.4f} vs champion {old:.4f} (delta {new - old:+.4f}, "
                f"allowed down to {-rule.tolerance:+.4f})",
            )
    return GateDecision(passed=not reasons, reasons=reasons, criteria=criteria)
