"""The local content-addressed cache: verified fetches, no partial file after a kill, a size bound with LRU eviction,
leases that keep what another process uses, copies where hard links are refused."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.resources.cache import USED_STAMP, CacheError, ContentCache, link_or_copy

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


def test_hard_links_refused_across_filesystems_fall_back_to_copies_said_once(tmp_path):
    shm = Path("/dev/shm")
    assert shm.stat().st_dev != tmp_path.stat().st_dev, "this test needs /dev/shm on a filesystem of its own"
    source_dir = Path(tempfile.mkdtemp(dir=shm))
    try:
        sources = []
        for i in range(3):
            sources.append(source_dir / f"{i}.jpg")
            sources[-1].write_bytes(bytes([i]) * 5000)
        said: list[str] = []
        for source in sources:  # another filesystem: EXDEV, then a whole copy under the target's name
            link_or_copy(source, tmp_path / "datasets" / "h" / source.name, said.append)
        for source in sources:
            target = tmp_path / "datasets" / "h" / source.name
            assert target.read_bytes() == source.read_bytes() and target.stat().st_ino != source.stat().st_ino
        assert len(said) == 1 and "EXDEV" in said[0] and "copying files instead" in said[0]
        assert not [p for p in (tmp_path / "datasets").rglob(".tmp-*")]

        local = tmp_path / "objects" / "a.jpg"  # the same filesystem: a link, nothing said
        local.parent.mkdir()
        local.write_bytes(b"x" * 100)
        link_or_copy(local, tmp_path / "datasets" / "h" / "a.jpg", said.append)
        assert (tmp_path / "datasets" / "h" / "a.jpg").stat().st_ino == local.stat().st_ino and len(said) == 1
        with pytest.raises(FileNotFoundError):  # a missing source is an error, never an empty copy
            link_or_copy(source_dir / "missing.jpg", tmp_path / "datasets" / "h" / "missing.jpg", said.append)
    finally:
        shutil.rmtree(source_dir)


def test_a_live_lease_in_another_process_keeps_its_folder_and_fresh_objects_until_the_process_dies(tmp_path):
    root = tmp_path / "cache"
    cache = ContentCache(root, max_bytes=1)
    shas = list(BY_SHA)
    cache.fetch(BY_SHA, BLOBS.__getitem__)
    old = time.time() - 3600
    for sha in shas:
        os.utime(cache.object_path(sha), (old, old))
    for name, linked in (("h0", shas[0]), ("h1", shas[1])):  # two older folders, one object linked each
        folder = cache.dataset_dir(name)
        folder.mkdir(parents=True)
        os.link(cache.object_path(linked), folder / "x.jpg")
        (folder / USED_STAMP).touch()
        os.utime(folder / USED_STAMP, (old, old))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys
from alumi_pipelines.resources.cache import ContentCache
cache = ContentCache({str(root)!r}, max_bytes=1)
with cache.lease("h1"):
    cache.fetch({{{shas[2]!r}: "k"}}, lambda key: b"")  # already cached: only marked used, for this lease
    print("held", flush=True)
    sys.stdin.readline()
""",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        removed = cache.prune()
        # h1 is leased and object 2 was used since that lease began: both stay; the rest goes
        assert removed[0] == "datasets/h0"
        assert set(removed[1:]) == {f"objects/{s}" for s in set(shas) - {shas[1], shas[2]}}
        assert cache.dataset_dir("h1").is_dir() and cache.object_path(shas[2]).exists()
        assert len(list((root / "leases").iterdir())) == 1
    finally:
        holder.kill()  # the process dies holding its lease: the kernel releases the lock
        holder.wait()
    assert len(list((root / "leases").iterdir())) == 1  # its lease file is left behind...
    removed = cache.prune()
    assert removed[0] == "datasets/h1" and set(removed[1:]) == {f"objects/{shas[1]}", f"objects/{shas[2]}"}
    assert not list((root / "leases").iterdir())  # ...and swept by the next prune


def test_a_lease_of_this_process_is_honoured_by_its_own_prune(tmp_path):
    cache = ContentCache(tmp_path / "cache", max_bytes=1)
    with cache.lease("h1") as folder:
        cache.fetch(BY_SHA, BLOBS.__getitem__)  # fetched for the folder, one of them linked so far
        folder.mkdir(parents=True)
        os.link(cache.object_path(next(iter(BY_SHA))), folder / "x.jpg")
        assert cache.prune() == []  # every object was used since the lease began, the folder is leased
        assert len(list((tmp_path / "cache" / "leases").iterdir())) == 1
    assert not list((tmp_path / "cache" / "leases").iterdir())
    removed = cache.prune()  # no lease left: everything goes
    assert removed[0] == "datasets/h1" and len(removed) == 1 + len(BY_SHA) and not folder.exists()
