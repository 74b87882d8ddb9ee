"""Deterministic, stable, class-stratified train/val/test splits and dataset content hashes.

An image's split is a function of its content hash, the seed and its stratum (its rarest class), so
adding data never moves an image that was already assigned: a test image stays a test image, and a
model is never scored on images an earlier model trained on. Exact duplicates share one image_id and
therefore one split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # a new lake's split: training gets the larger share
EARLIER_FRACTIONS = (0.7, 0.15, 0.15)  # the split of a lake whose gold versions predate the recorded setting


@dataclass(frozen=True)
class SplitResult:
    assignment: dict[str, str]  # image_id -> split
    moved: dict[str, str]  # image_id -> why it was moved from its hash split


def unit_interval(image_id: str, seed: int) -> float:
    """A uniform number in [0, 1) derived from the image id and the seed."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratum(classes: Sequence[str], class_frequency: Mapping[str, int]) -> str:
    """An image's stratum: its rarest class across the dataset, or 'background'."""
    if not classes:
        return "background"
    return min(set(classes), key=lambda c: (class_frequency.get(c, 0), c))


def parse_fractions(text: str, *, where: str = "split fractions") -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` as three fractions, or ValueError naming ``where`` and the rule broken."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError as exc:
        raise ValueError(f"{where} {text!r}: must be three numbers such as 0.8,0.1,0.1 (train,val,test)") from exc
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise ValueError(f"{where} {text!r}: must be three non-negative fractions train,val,test summing to 1")
    return values  # type: ignore[return-value]


def lake_fractions(
    recorded: Sequence[float] | None, override: Sequence[float] | None, *, has_gold: bool
) -> tuple[tuple[float, float, float], str]:
    """The split fractions a gold build uses, and where they come from.

    The lake records its fractions, so its images keep their splits: an explicit override (recorded from then
    on) wins, then the record, then, for a lake with gold versions built before the record existed, the
    fractions those versions used, else :data:`DEFAULT_FRACTIONS`."""
    if override:
        return tuple(override), "ALUMI_SPLIT_FRACTIONS"  # type: ignore[return-value]
    if recorded:
        return tuple(recorded), "the lake's record"  # type: ignore[return-value]
    if has_gold:
        return EARLIER_FRACTIONS, "the lake's earlier gold versions"
    return DEFAULT_FRACTIONS, "the default for a new lake"


def assign_splits(
    image_classes: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> SplitResult:
    """Assign every image to train/val/test.

    Each stratum is cut at the fraction boundaries of the images' hash values; a stratum with at
    least three images that would leave val or test empty gives the train image with the smallest
    hash value to it, so every class that can be evaluated is.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    frequency: dict[str, int] = {}
    for classes in image_classes.values():
        for c in set(classes):
            frequency[c] = frequency.get(c, 0) + 1
    by_stratum: dict[str, list[tuple[float, str]]] = {}
    for image_id, classes in image_classes.items():
        by_stratum.setdefault(stratum(classes, frequency), []).append((unit_interval(image_id, seed), image_id))

    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    assignment: dict[str, str] = {}
    moved: dict[str, str] = {}
    for name in sorted(by_stratum):
        members = sorted(by_stratum[name])
        for u, image_id in members:
            assignment[image_id] = "train" if u < cut_train else "val" if u < cut_val else "test"
        if len(members) >= 3:
            for split, fraction in (("test", fractions[2]), ("val", fractions[1])):
                if fraction > 0 and not any(assignment[i] == split for _, i in members):
                    donors = [i for _, i in members if assignment[i] == "train"]
                    if len(donors) > 1:
                        assignment[donors[0]] = split
                        moved[donors[0]] = f"stratum {name!r} had no {split} image"
    return SplitResult(assignment=assignment, moved=moved)


def dataset_hash(rows: Sequence[tuple], classes: Sequence[str]) -> str:
    """sha256 over the class names and the sorted rows that define a dataset's content."""
    h = hashlib.sha256()
    h.update("\x1f".join(classes).encode())
    for row in sorted(rows):
        h.update(b"\x1e")
        h.update("\x1f".join(repr(v) for v in row).encode())
    return h.hexdigest()
