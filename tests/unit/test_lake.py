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


def test_write_if_absent_creates_once_and_never_replaces(lake, tmp_path):
    assert lake.write_if_absent("raw/images/ab/x.jpg", b"one") is True
    assert lake.write_if_absent("raw/images/ab/x.jpg", b"two") is False
    assert lake.read_bytes("raw/images/ab/x.jpg") == b"one"
    assert [f.key for f in lake.list_files("raw")] == ["raw/images/ab/x.jpg"]
    assert os.listdir(tmp_path / "lake" / "raw" / "images" / "ab") == ["x.jpg"]  # no temporary file left
    remote = Lake(base_uri=f"memory://lake-{tmp_path.name}")  # an fsspec object store
    assert remote.write_if_absent("raw/a.bin", b"one") is True
    assert remote.write_if_absent("raw/a.bin", b"two") is False
    assert remote.read_bytes("raw/a.bin") == b"one"


def test_racing_create_if_absent_writers_leave_one_whole_object(lake):
    import threading

    payloads = [bytes([i]) * 200_000 for i in range(8)]
    wins, start = [], threading.Barrier(len(payloads))

    def race(data):
        start.wait()
        if lake.write_if_absent("processed/images/ab/y.jpg", data):
            wins.append(data)

    threads = [threading.Thread(target=race, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and lake.read_bytes("processed/images/ab/y.jpg") == wins[0]


def test_many_objects_go_through_a_bounded_pool(tmp_path):
    import threading
    import time

    lake = Lake(base_uri=str(tmp_path / "lake"), concurrency=3)
    running, peak, lock = [0], [0], threading.Lock()

    def slow(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * 2

    assert lake.map(slow, range(12)) == [i * 2 for i in range(12)]
    assert peak[0] == 3
    with pytest.raises(RuntimeError, match="write 5 failed"):
        with lake.background() as submit:
            for i in range(10):
                submit(
                    lambda i=i: (
                        lake.write_bytes(f"t/{i}", b"x")
                        if i != 5
                        else (_ for _ in ()).throw(RuntimeError(f"write {i} failed"))
                    )
                )
    assert len(lake.list_files("t")) == 9  # every other write finished before the error was raised
    assert lake.read_many(["t/1", "t/2"]) == {"t/1": b"x", "t/2": b"x"}
    assert Lake(base_uri=str(tmp_path / "lake")).absent_filter("t")("t/1") is True  # locally: no listing


def test_gather_runs_the_calls_at_once_and_returns_their_results_in_order(tmp_path):
    import threading

    lake = Lake(base_uri=str(tmp_path), concurrency=3)
    all_in = threading.Barrier(3, timeout=10)  # passes only when the three calls are in flight together

    def call(value):
        def run():
            all_in.wait()
            return value

        return run

    assert lake.gather(call("a"), call("b"), call("c")) == ["a", "b", "c"]

    finished, started = [], threading.Event()

    def fails():
        started.wait(10)
        raise FileNotFoundError("lake key 'x' does not exist")

    def slow():
        started.set()
        threading.Event().wait(0.2)
        finished.append("slow")

    with pytest.raises(FileNotFoundError, match="'x'"):
        lake.gather(fails, slow)
    assert finished == ["slow"]  # no call is still running when the error is raised
