"""Splits: deterministic, stable as data grows, stratified, duplicates together."""

import pytest

from alumi_pipelines.lib.vision.splits import (
    DEFAULT_FRACTIONS,
    EARLIER_FRACTIONS,
    assign_splits,
    dataset_hash,
    lake_fractions,
    parse_fractions,
)


def _images(n, classes=("scratch", "dent", "pit")):
    return {f"img{i:04d}": [classes[i % len(classes)]] for i in range(n)}


def test_deterministic_and_seed_dependent():
    a = assign_splits(_images(300), seed=0).assignment
    assert a == assign_splits(_images(300), seed=0).assignment
    assert a != assign_splits(_images(300), seed=1).assignment


@pytest.mark.parametrize("fractions", [DEFAULT_FRACTIONS, EARLIER_FRACTIONS, (0.6, 0.2, 0.2)])
def test_fractions_are_respected_per_class(fractions):
    images = _images(3000)
    a = assign_splits(images, seed=0, fractions=fractions).assignment
    for cls in ("scratch", "dent", "pit"):
        members = [i for i, c in images.items() if c == [cls]]
        share = {s: sum(a[i] == s for i in members) / len(members) for s in ("train", "val", "test")}
        assert share["train"] == pytest.approx(fractions[0], abs=0.05)
        assert share["val"] == pytest.approx(fractions[1], abs=0.04)
        assert share["test"] == pytest.approx(fractions[2], abs=0.04)


def test_a_new_lake_gives_training_the_larger_share():
    assert DEFAULT_FRACTIONS == (0.8, 0.1, 0.1)
    assert lake_fractions(None, None, has_gold=False) == (DEFAULT_FRACTIONS, "the default for a new lake")


def test_an_existing_lake_keeps_its_split():
    # gold built before the record existed: the fractions those versions used, so no image changes split
    assert lake_fractions(None, None, has_gold=True) == (EARLIER_FRACTIONS, "the lake's earlier gold versions")
    assert lake_fractions([0.6, 0.2, 0.2], None, has_gold=True) == ((0.6, 0.2, 0.2), "the lake's record")
    assert lake_fractions([0.6, 0.2, 0.2], (0.9, 0.05, 0.05), has_gold=True) == (
        (0.9, 0.05, 0.05),
        "ALUMI_SPLIT_FRACTIONS",
    )


def test_shrinking_the_training_share_only_moves_images_out_of_train():
    images = _images(2000)
    new = assign_splits(images, seed=0, fractions=DEFAULT_FRACTIONS).assignment
    old = assign_splits(images, seed=0, fractions=EARLIER_FRACTIONS).assignment
    assert all(new[i] == "train" for i in images if old[i] == "train")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0.8,0.1", "three non-negative fractions"),
        ("0.8,0.1,0.2", "summing to 1"),
        ("a,b,c", "three numbers such as 0.8,0.1,0.1"),
        ("0,0.5,0.5", "three non-negative fractions"),
    ],
)
def test_bad_fractions_name_the_rule(text, rule):
    with pytest.raises(ValueError, match=rule) as err:
        parse_fractions(text, where="ALUMI_SPLIT_FRACTIONS=")
    assert "ALUMI_SPLIT_FRACTIONS=" in str(err.value)
    assert parse_fractions(" 0.7, 0.2, 0.1") == (0.7, 0.2, 0.1)


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
