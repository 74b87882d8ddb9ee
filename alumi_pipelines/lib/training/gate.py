"""The promotion rule: may a challenger detector replace the champion?

Default rule: the challenger's test mAP50-95 is at least the champion's minus a tolerance, and no class's
recall drops by more than a margin. With no champion yet, the challenger must reach an absolute floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Absolute mAP50-95 floor per profile when there is no champion: the ci profile trains for seconds,
# so its floor only proves the path works.
PROFILE_FLOORS = {"ci": 0.0, "cpu": 0.1, "gpu": 0.25}


@dataclass(frozen=True)
class GateRule:
    tolerance: float = 0.01  # the challenger may trail the champion's mAP50-95 by this much (negative: must beat it)
    recall_margin: float = 0.05  # largest allowed drop of any class's recall
    floor: float = 0.1  # minimum mAP50-95 when there is no champion

    def __post_init__(self) -> None:
        for name in ("tolerance", "recall_margin", "floor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"gate rule {name}={value!r}: must be a finite number")
        if self.recall_margin < 0:
            raise ValueError(f"gate rule recall_margin={self.recall_margin}: must be >= 0")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"gate rule floor={self.floor}: must be in [0, 1]")


def rule_for_profile(
    profile: str, *, floor: float | None = None, tolerance: float | None = None, recall_margin: float | None = None
) -> GateRule:
    """The default rule of a profile with any explicitly given value on top."""
    if profile not in PROFILE_FLOORS:
        raise ValueError(f"profile {profile!r}: not one of {', '.join(PROFILE_FLOORS)}")
    base = GateRule(floor=PROFILE_FLOORS[profile])
    return GateRule(
        tolerance=base.tolerance if tolerance is None else tolerance,
        recall_margin=base.recall_margin if recall_margin is None else recall_margin,
        floor=base.floor if floor is None else floor,
    )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    criteria: list[dict[str, Any]] = field(default_factory=list)  # each rule checked, with its numbers

    def summary(self) -> str:
        if self.passed:
            return "passed: " + "; ".join(c["detail"] for c in self.criteria)
        return "refused: " + "; ".join(self.reasons)

    def markdown(self) -> str:
        lines = ["| criterion | result | detail |", "| --- | --- | --- |"]
        for c in self.criteria:
            lines.append(f"| {c['name']} | {'pass' if c['passed'] else 'FAIL'} | {c['detail']} |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "criteria": list(self.criteria)}


def _metric(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _recall(metrics: Mapping[str, Any], name: str) -> float | None:
    row = (metrics.get("per_class") or {}).get(name) or {}
    if not row.get("instances"):
        return None
    return _metric(row, "recall")


def decide(challenger: Mapping[str, Any], champion: Mapping[str, Any] | None, rule: GateRule) -> GateDecision:
    """Apply the rule to two evaluations on the same split (``map50_95`` and ``per_class`` recall)."""
    criteria: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        criteria.append({"name": name, "passed": ok, "detail": detail})

    score = _metric(challenger, "map50_95")
    if score is None:
        record("challenger mAP50-95", False, "the challenger's evaluation has no finite map50_95")
    elif champion is None:
        record(
            "absolute floor",
            score >= rule.floor,
            f"no champion yet: challenger mAP50-95 {score:.4f} {'>=' if score >= rule.floor else '<'} "
            f"floor {rule.floor:.4f}",
        )
    else:
        best = _metric(champion, "map50_95")
        if best is None:
            record("mAP50-95 vs champion", False, "the champion's evaluation has no finite map50_95")
        else:
            needed = best - rule.tolerance
            ok = score >= needed - 1e-12
            record(
                "mAP50-95 vs champion",
                ok,
                f"challenger {score:.4f} {'>=' if ok else '<'} champion {best:.4f} "
                f"- tolerance {rule.tolerance:.4f} = {needed:.4f}",
            )
        drops = []
        for name in sorted(set(challenger.get("per_class") or {}) | set(champion.get("per_class") or {})):
            old, new = _recall(champion, name), _recall(challenger, name)
            if old is None:
                continue  # the champion has no measured recall for this class on the split
            new = 0.0 if new is None else new
            if old - new > rule.recall_margin + 1e-12:
                drops.append(f"{name} {old:.3f} -> {new:.3f} (drop {old - new:.3f})")
        record(
            "per-class recall",
            not drops,
            f"recall drops larger than {rule.recall_margin:.3f}: " + ", ".join(drops)
            if drops
            else f"no class's recall dropped by more than {rule.recall_margin:.3f}",
        )
    reasons = [c["detail"] for c in criteria if not c["passed"]]
    return GateDecision(passed=not reasons, reasons=reasons, criteria=criteria)
