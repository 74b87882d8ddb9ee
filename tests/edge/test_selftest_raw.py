"""The self-test cannot pass vacuously: raw scores are compared too, and a sample with nothing to compare is refused."""

from __future__ import annotations

import json
import shutil

import pytest
from edge_support import encode, release_sample

from alumi_edge.manifest import parse_manifest
from alumi_edge.selftest import RAW_TOP_K, SelfTestError, run_self_test
from alumi_pipelines.lib.export import release


def _copy_current(edge_home, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree((edge_home / "current").resolve(), folder)
    return folder, parse_manifest((folder / "manifest.json").read_bytes())


def _rewrite_expected(folder, change):
    path = folder / "sample_expected.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_the_self_test_compares_raw_top_scores_as_well_as_boxes(edge_home, tmp_path):
    folder, manifest = _copy_current(edge_home, tmp_path)
    report = run_self_test(folder, manifest)
    assert report.matched == report.expected > 0 and report.raw_compared == RAW_TOP_K

    def shift(document):
        document["raw"]["top_scores"] = [v + 0.05 for v in document["raw"]["top_scores"]]

    _rewrite_expected(folder, shift)
    with pytest.raises(SelfTestError, match=r"raw output differs: top score \d+ is .* apart as logits, tolerance 0.15"):
        run_self_test(folder, manifest)


def test_a_model_that_detects_nothing_cannot_pass_on_an_empty_expectation(edge_home, tmp_path):
    folder, manifest = _copy_current(edge_home, tmp_path)

    def nothing(document):
        document["boxes"] = []
        document.pop("raw")

    _rewrite_expected(folder, nothing)
    with pytest.raises(SelfTestError, match="has nothing to compare"):
        run_self_test(folder, manifest)

    # with raw scores an empty box list still proves the bytes compute the same function
    folder2, manifest2 = _copy_current(edge_home, tmp_path / "2")
    _rewrite_expected(folder2, lambda document: document.update(boxes=[]))
    with pytest.raises(SelfTestError, match="unexpected"):  # the real model does find boxes: they are unexpected
        run_self_test(folder2, manifest2)


def test_the_export_refuses_a_release_whose_sample_has_nothing_to_compare(tmp_path, signing_keys, color_onnx):
    sample = tmp_path / "sample.png"
    sample.write_bytes(encode(release_sample()))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"conf": 0.25, "iou": 0.7, "boxes": []}))
    files = [
        release.ReleaseInput(color_onnx, "model.onnx", "model"),
        release.ReleaseInput(sample, "sample.png", "sample_image"),
        release.ReleaseInput(expected, "sample_expected.json", "sample_expected"),
    ]
    with pytest.raises(release.ReleaseError, match="no expected boxes on the sample image"):
        release.write_release(
            tmp_path / "out",
            files,
            version="1",
            classes=["red", "green", "blue"],
            imgsz=64,
            private_key_pem=signing_keys[0],
        )
    assert not (tmp_path / "out" / "manifest.json").exists()
    raw = release.sample_raw(color_onnx, sample)
    assert len(raw["top_scores"]) == RAW_TOP_K and raw["top_scores"] == sorted(raw["top_scores"], reverse=True)
    assert raw["top_scores"][0] > 0.5 and raw["tolerance"] == 0.15
    # no boxes but informative raw scores: something to compare, published; flat raw scores: refused
    expected.write_text(json.dumps({"conf": 0.25, "iou": 0.7, "boxes": [], "raw": raw}))
    names = ["red", "green", "blue"]
    release.write_release(tmp_path / "ok", files, version="1", classes=names, imgsz=64, private_key_pem=signing_keys[0])
    flat = {"boxes": [], "raw": {"top_scores": [0.0] * RAW_TOP_K, "tolerance": 0.15}}
    expected.write_text(json.dumps({"boxes": [], "raw": raw, "roles": {"model_int8": flat}}))
    with pytest.raises(release.ReleaseError, match="roles.model_int8: no expected boxes"):
        release.write_release(
            tmp_path / "x", files, version="1", classes=names, imgsz=64, private_key_pem=signing_keys[0]
        )
