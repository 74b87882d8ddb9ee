"""The local content-addressed cache: verified fetches, no partial file after a kill, a size bound with LRU eviction."""

import os
import subprocess
import sys
import time

import pytest

from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.resources.cache import CacheError, ContentCache

BLOBS = {f"processed/images/{i}.jpg": bytes([i]) * (1000 + i) for i in range(6)}
BY_SHA = {sha256_hex(data): key for key, data in BLOBS.items()}


def test_only_missing_objects_are_read_and_each_is_checked(tmp_path):
    cache = ContentCache(tmp_path / "cache", max_bytes=1 << 30)
    reads = []

    def read(key):
        reads.append(key)
        return BLOBS[key]

    first = dict(list(BY_SHA.items())[:4])
    stats = cache.fetch(first, read)
    assert (stats.wanted, stats.fetched, stats.fetched_bytes) == (4, 4, sum(len(BLOBS[k]) for k in first.values()))
    assert sorted(reads) == sorted(first.values())
    for sha, key in first.items():
        assert cache.object_path(sha).read_bytes() == BLOBS[key]
    reads.clear()
    stats = cache.fetch(BY_SHA, read)  # two new objects: only they are read
    assert (stats.fetched, stats.hits) == (2, 4) and sorted(reads) == sorted(list(BY_SHA.values())[4:])

    sha = "0" * 64
    with pytest.raises(CacheError, match=r"sha256 .* not 0000"):
        cache.fetch({sha: "processed/images/0.jpg"}, read)
    assert not cache.object_path(sha).exists()
    assert not [p for p in cache.objects.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]


def test_a_fetch_killed_midway_leaves_no_partial_file_and_the_next_run_completes(tmp_path):
    root = tmp_path / "cache"
    big = os.urandom(4 << 20)
    sha = sha256_hex(big)
    (tmp_path / "blob.bin").write_bytes(big)
    script = f"""
import os, signal
from pathlib import Path
from alumi_pipelines.resources.cache import ContentCache
import alumi_pipelines.lib.files as files

real_write = files._write_temp
def write_then_die(full, data, fsync):  # the process dies with half the bytes in the temporary file
    tmp = real_write(full, data[: len(data) // 2], fsync)
    os.kill(os.getpid(), signal.SIGKILL)
files._write_temp = write_then_die
cache = ContentCache({str(root)!r}, max_bytes=1 << 30)
cache.fetch({{{sha!r}: "k"}}, lambda key: Path({str(tmp_path / "blob.bin")!r}).read_bytes())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    cache = ContentCache(root, max_bytes=1 << 30)
    assert not cache.object_path(sha).exists()  # only a .tmp- file, under no object's name
    leftovers = [p for p in cache.objects.rglob("*") if p.is_file()]
    assert (
        len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-") and leftovers[0].stat().st_size == len(big) // 2
    )

    stats = cache.fetch({sha: "k"}, lambda key: big)  # the next run fetches it whole
    assert stats.fetched == 1 and cache.object_path(sha).read_bytes() == big
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert cache.prune() == [str(leftovers[0].relative_to(root))]  # a stale temporary file is swept


def test_the_size_bound_evicts_least_recently_used_and_keeps_the_dataset_in_use(tmp_path):
    cache = ContentCache(tmp_path / "cache", max_bytes=1 << 30)
    shas = list(BY_SHA)
    cache.fetch(BY_SHA, BLOBS.__getitem__)
    for i, sha in enumerate(shas):  # object i last used i minutes ago... in reverse: 0 is the oldest
        t = time.time() - 600 + i * 60
        os.utime(cache.object_path(sha), (t, t))
    # a dataset folder linking the two oldest objects, in use now
    current = cache.dataset_dir("h1")
    (current / "images").mkdir(parents=True)
    for sha in shas[:2]:
        os.link(cache.object_path(sha), current / "images" / f"{sha}.jpg")
    (current / "labels.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    cache.touch(current)
    # an older dataset folder linking object 2
    old = cache.dataset_dir("h0")
    old.mkdir(parents=True)
    os.link(cache.object_path(shas[2]), old / "x.jpg")
    (old / ".used").touch()
    os.utime(old / ".used", (time.time() - 3600, time.time() - 3600))

    total = cache.size()
    assert total == sum(len(b) for b in BLOBS.values()) + len("0 0.5 0.5 0.1 0.1\n")
    bound = total - len(BLOBS[BY_SHA[shas[2]]]) - len(BLOBS[BY_SHA[shas[3]]]) + 10
    cache.max_bytes = bound
    removed = cache.prune(keep={"h1"})
    # the old dataset goes first (its object is then unlinked), then the least recently used unlinked object
    assert removed == ["datasets/h0", f"objects/{shas[2]}", f"objects/{shas[3]}"]
    assert cache.size() <= bound
    assert all(cache.object_path(s).exists() for s in shas[:2] + shas[4:])  # the dataset in use keeps its objects
    assert current.is_dir() and not old.exists()
