"""Splits: deterministic, stable as data grows, stratified, duplicates together."""

import pytest

from alumi_pipelines.lib.vision.splits import assign_splits, dataset_hash


def _images(n, classes=("scratch", "dent", "pit")):
    return {f"img{i:04d}": [classes[i % len(classes)]] for i in range(n)}


def test_deterministic_and_seed_dependent():
    a = assign_splits(_images(300), seed=0).assignment
    assert a == assign_splits(_images(300), seed=0).assignment
    assert a != assign_splits(_images(300), seed=1).assignment


def test_fractions_are_respected_per_class():
    images = _images(3000)
    a = assign_splits(images, seed=0).assignment
    for cls in ("scratch", "dent", "pit"):
        members = [i for i, c in images.items() if c == [cls]]
        share = {s: sum(a[i] == s for i in members) / len(members) for s in ("train", "val", "test")}
        assert share["train"] == pytest.approx(0.7, abs=0.05)
        assert share["val"] == pytest.approx(0.15, abs=0.04)
        assert share["test"] == pytest.approx(0.15, abs=0.04)


def test_growing_the_dataset_never_moves_an_assigned_image():
    small = assign_splits(_images(500), seed=3).assignment
    big = assign_splits(_images(2000), seed=3).assignment
    moved = [i for i in small if small[i] != big[i]]
    assert moved == []


def test_rare_class_gets_val_and_test_images():
    images = _images(200)
    images.update({f"rare{i}": ["crack"] for i in range(4)})
    result = assign_splits(images, seed=0)
    splits = {result.assignment[f"rare{i}"] for i in range(4)}
    assert {"val", "test"} <= splits


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(_images(10), fractions=(0.8, 0.3, 0.1))


def test_dataset_hash_is_order_free_and_content_sensitive():
    rows = [("a", "train", "0 0.5 0.5 0.1 0.1\n"), ("b", "test", "")]
    assert dataset_hash(rows, ["x"]) == dataset_hash(list(reversed(rows)), ["x"])
    assert dataset_hash(rows, ["x"]) != dataset_hash([("a", "train", "0 0.5 0.5 0.1 0.2\n"), rows[1]], ["x"])
    assert dataset_hash(rows, ["x"]) != dataset_hash(rows, ["y"])
