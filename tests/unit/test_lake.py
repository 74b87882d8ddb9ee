"""The lake: key safety, atomic writes, tables, listing."""

import os
import subprocess
import sys

import polars as pl
import pytest

from alumi_pipelines.resources.lake import Lake, LakeKeyError, check_key


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "/etc/passwd", "a\\b", "c:/x", "", "a\x00b"])
def test_unsafe_keys_are_refused_with_the_rule(bad):
    with pytest.raises(LakeKeyError, match="lake key"):
        check_key(bad)


def test_bytes_json_and_tables_round_trip(lake):
    lake.write_bytes("raw/images/ab/abc.jpg", b"\xff\xd8\xffdata")
    assert lake.read_bytes("raw/images/ab/abc.jpg") == b"\xff\xd8\xffdata"
    lake.write_json("gold/current.json", {"dataset_hash": "h", "n": 3})
    assert lake.read_json("gold/current.json") == {"dataset_hash": "h", "n": 3}
    df = pl.DataFrame({"image_id": ["a", "b"], "width": [10, 20]})
    lake.write_table("raw/manifests/b1.parquet", df)
    assert lake.read_table("raw/manifests/b1.parquet").equals(df)
    assert [f.key for f in lake.list_files("raw")] == ["raw/images/ab/abc.jpg", "raw/manifests/b1.parquet"]
    assert lake.list_dirs("raw") == ["images", "manifests"]


def test_same_table_twice_gives_identical_bytes(lake):
    df = pl.DataFrame({"x": [1.5, 2.5], "s": ["a", "b"]})
    lake.write_table("t/a.parquet", df)
    lake.write_table("t/b.parquet", df)
    assert lake.read_bytes("t/a.parquet") == lake.read_bytes("t/b.parquet")


def test_missing_key_error_names_the_key(lake):
    with pytest.raises(FileNotFoundError, match="processed/none.parquet"):
        lake.read_bytes("processed/none.parquet")


def test_a_killed_write_leaves_no_visible_file(tmp_path):
    """A writer killed mid-write leaves the old content (or nothing) under the key, never a partial file."""
    lake = Lake(base_uri=str(tmp_path / "lake"))
    lake.write_bytes("raw/x.bin", b"old")
    script = f"""
import os, signal
from alumi_pipelines.resources.lake import Lake
lake = Lake(base_uri={str(tmp_path / "lake")!r})
def die(*args):  # killed after the data is written, before it is renamed into place
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = die
lake.write_bytes("raw/x.bin", b"new" * 1000000)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert lake.read_bytes("raw/x.bin") == b"old"
    assert [f.key for f in lake.list_files("raw")] == ["raw/x.bin"]  # the temp file is hidden from readers
    leftovers = [n for n in os.listdir(tmp_path / "lake" / "raw") if n != "x.bin"]
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers)


def test_local_path_and_uri(lake, tmp_path):
    lake.write_bytes("models/a.pt", b"1")
    assert lake.local_path("models/a.pt").read_bytes() == b"1"
    assert lake.uri("models/a.pt").startswith("file://")


def test_put_and_get_dir(lake, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    assert lake.put_dir(src, "gold/datasets/h") == ["gold/datasets/h/a.txt", "gold/datasets/h/sub/b.txt"]
    out = lake.get_dir("gold/datasets/h", tmp_path / "out")
    assert (out / "sub" / "b.txt").read_text() == "b"


def test_copy_within_the_lake_never_overwrites(lake):
    lake.write_bytes("raw/images/ab/x.jpg", b"one")
    assert lake.copy("raw/images/ab/x.jpg", "processed/images/ab/x.jpg") is True
    assert lake.read_bytes("processed/images/ab/x.jpg") == b"one"
    assert lake.copy("raw/images/ab/x.jpg", "processed/images/ab/x.jpg") is False
    lake.write_bytes("raw/images/ab/x.jpg", b"two")  # a rewrite replaces the raw object, not the copy
    assert lake.read_bytes("processed/images/ab/x.jpg") == b"one"
    with pytest.raises(FileNotFoundError):
        lake.copy("raw/images/ab/missing.jpg", "processed/images/ab/missing.jpg")


@pytest.mark.parametrize(
    ("key", "normal"), [("a/b.jpg", "a/b.jpg"), ("a//b", "a/b"), ("a/./b", "a/b"), ("a/b/", "a/b")]
)
def test_keys_are_normalised(key, normal):
    assert check_key(key) == normal


def test_unsafe_keys_are_refused_by_every_method(lake):
    for call in (
        lambda: lake.read_bytes("../x"),
        lambda: lake.write_bytes("/etc/x", b""),
        lambda: lake.copy("a", "b/../../c"),
        lambda: lake.exists("c:/x"),
    ):
        with pytest.raises(LakeKeyError):
            call()
