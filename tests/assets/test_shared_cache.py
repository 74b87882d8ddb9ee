"""One cache shared by processes at once, as pods share one volume on Kubernetes: two processes staging gold
versions from one lake into one cache both end with complete folders, whatever the other fetches or evicts; a cache
on a filesystem that refuses links to the lake's files holds copies."""

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from alumi_pipelines.assets.gold import build_gold, read_version_manifest, stage_gold
from alumi_pipelines.assets.processed import process_batch
from alumi_pipelines.assets.raw import ingest_landing_batch
from alumi_pipelines.lib.files import TMP_PREFIX
from alumi_pipelines.resources.cache import ContentCache

# One staging process. The lake is read through "local://", which fsspec serves from the same folder as an object
# store would (no local paths), so images are fetched into the cache's objects/ and linked from there. With
# ``hold`` > 0 the process reads that many images, says so (the file ``holding``) and reads the others once the
# file ``release`` exists: it is then caught mid-fetch, its folder begun and some images fetched but not linked.
# The process says it is ready (the file ``ready``), starts when the file ``go`` exists, stages under a lease of
# its own (so the folder it then lists is not evicted by the other process) and prints every file's sha256.
STAGE = """
import hashlib, json, sys, threading, time
from pathlib import Path
from alumi_pipelines.assets.gold import stage_gold
from alumi_pipelines.resources.cache import ContentCache
from alumi_pipelines.resources.lake import Lake

lake_root, cache_root, prefix, work, max_bytes, hold, go, holding, release = sys.argv[1:]
reads, count_lock = [0], threading.Lock()

class HeldLake(Lake):
    def read_bytes(self, key):
        if "/images/" in key and int(hold) > 0:
            with count_lock:
                reads[0] += 1
                n = reads[0]
            if n > int(hold):
                Path(holding).touch()
                while not Path(release).exists():
                    time.sleep(0.005)
        return super().read_bytes(key)

lake = HeldLake(base_uri="local://" + lake_root)
cache = ContentCache(cache_root, int(max_bytes))
Path(go).with_name("ready").touch()
while not Path(go).exists():
    time.sleep(0.002)
with cache.lease(prefix.rsplit("/", 1)[1]):
    root = stage_gold(lake, prefix, Path(work), cache=cache)
    files = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }
    linked = sum(1 for p in root.glob("images/*/*") if p.stat().st_nlink >= 2)
print(json.dumps({"root": str(root), "files": files, "linked": linked}))
"""


class Stager:
    """A staging process of its own, started now, staging once its go file exists."""

    def __init__(self, lake, cache_root: Path, prefix: str, folder: Path, max_bytes: int, hold: int = 0):
        folder.mkdir()
        self.go, self.holding, self.release = folder / "go", folder / "holding", folder / "release"
        self.ready = folder / "ready"
        args = [str(Path(lake.base_uri).absolute()), str(cache_root), prefix, str(folder / "work"), str(max_bytes)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STAGE, *args, str(hold), str(self.go), str(self.holding), str(self.release)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + 120
        while not path.exists():
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"{path.name} never appeared"
            time.sleep(0.01)

    def result(self) -> dict:
        stdout, stderr = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, stderr[-3000:]
        return json.loads(stdout.strip().splitlines()[-1])


def _ingest(lake, settings, write_batch, batch, seed):
    write_batch(batch, n=10, seed=seed)
    ingest_landing_batch(lake, batch, settings)
    process_batch(lake, batch, settings)


def _listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _expected(lake, prefix: str, tmp_path: Path) -> tuple[dict[str, str], dict]:
    """The folder one process alone stages into a cache of its own: every file's sha256 but data.yaml's (which
    names the folder), and data.yaml without its path."""
    root = stage_gold(
        lake, prefix, tmp_path / "alone-work", cache=ContentCache(tmp_path / f"alone-{prefix[-8:]}", 1 << 40)
    )
    files = _listing(root)
    files.pop("data.yaml")
    doc = yaml.safe_load((root / "data.yaml").read_text())
    doc.pop("path")
    return files, doc


def _check(staged: dict, expected: tuple[dict[str, str], dict], cache_root: Path) -> None:
    files, doc = expected
    got = dict(staged["files"])
    data_yaml = got.pop("data.yaml")
    assert got == files  # every image, label, list and marker, byte for byte; nothing more
    root = Path(staged["root"])
    assert root.parent == cache_root / "datasets"
    images = [f for f in files if f.startswith("images/")]
    assert staged["linked"] == len(images) > 0  # images are links to the shared objects, not copies
    on_disk = yaml.safe_load((root / "data.yaml").read_text()) if root.is_dir() else None
    if on_disk is not None:
        assert hashlib.sha256((root / "data.yaml").read_bytes()).hexdigest() == data_yaml
        assert on_disk.pop("path") == str(root) and on_disk == doc


def _no_partial_file(cache_root: Path) -> None:
    leftovers = [p for p in cache_root.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []


def test_two_processes_staging_the_same_version_at_once_end_with_one_complete_folder(
    lake, settings, write_batch, tmp_path
):
    _ingest(lake, settings, write_batch, "day-1", 1)
    _ingest(lake, settings, write_batch, "day-2", 2)
    version = build_gold(lake, settings)
    expected = _expected(lake, version.prefix, tmp_path)
    assert len([f for f in expected[0] if f.startswith("images/")]) == 20

    cache_root = tmp_path / "shared-cache"
    stagers = [Stager(lake, cache_root, version.prefix, tmp_path / f"p{i}", 1 << 40) for i in range(2)]
    for stager in stagers:  # both processes have imported their code and wait for the same moment
        stager.wait_for(stager.ready)
    for stager in stagers:
        stager.go.touch()
    first, second = (stager.result() for stager in stagers)
    assert first["root"] == second["root"] and first["files"] == second["files"]
    for staged in (first, second):
        _check(staged, expected, cache_root)
    _no_partial_file(cache_root)
    cache = ContentCache(cache_root, 1 << 40)
    assert len([p for p in cache.objects.rglob("*") if p.is_file()]) == 20  # each image fetched into one object
    assert not list((cache_root / "leases").iterdir())  # both leases ended with their processes


def test_a_process_evicting_never_removes_what_another_is_staging(lake, settings, write_batch, tmp_path):
    """The slow process stages the larger version while the fast one stages the smaller one and then prunes a cache
    bounded at one byte: the prune may remove neither the folder being built nor the images fetched for it."""
    _ingest(lake, settings, write_batch, "day-1", 1)
    small = build_gold(lake, settings)
    _ingest(lake, settings, write_batch, "day-2", 2)
    large = build_gold(lake, settings)
    expected = {v.prefix: _expected(lake, v.prefix, tmp_path) for v in (small, large)}

    cache_root = tmp_path / "shared-cache"
    slow = Stager(lake, cache_root, large.prefix, tmp_path / "slow", 1, hold=6)
    fast = Stager(lake, cache_root, small.prefix, tmp_path / "fast", 1)
    fast.wait_for(fast.ready)
    slow.go.touch()
    slow.wait_for(slow.holding)  # six images fetched, the others waiting: the fast process stages and prunes now
    fast.go.touch()
    fast_staged = fast.result()
    slow.release.touch()
    slow_staged = slow.result()
    _check(slow_staged, expected[large.prefix], cache_root)
    _check(fast_staged, expected[small.prefix], cache_root)
    _no_partial_file(cache_root)

    cache = ContentCache(cache_root, 1)  # no lease is left: the next prune may evict everything
    cache.prune()
    assert not list((cache_root / "datasets").iterdir()) and not [p for p in cache.objects.rglob("*") if p.is_file()]
    assert not list((cache_root / "leases").iterdir())


def test_a_cache_on_another_filesystem_than_the_local_lake_holds_copies_and_says_so_once(
    lake, settings, write_batch, tmp_path
):
    _ingest(lake, settings, write_batch, "day-1", 1)
    version = build_gold(lake, settings)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert shm.stat().st_dev != tmp_path.stat().st_dev, "this test needs /dev/shm on a filesystem of its own"
        said: list[str] = []
        root = stage_gold(lake, version.prefix, tmp_path / "work", cache=ContentCache(shm, 1 << 40), log=said.append)
        manifest = read_version_manifest(lake, version.prefix)
        assert manifest.height == 10
        for row in manifest.iter_rows(named=True):  # whole copies of the lake's own files, not links
            staged = root / row["file"]
            assert staged.read_bytes() == lake.read_bytes(row["image_key"]) and staged.stat().st_nlink == 1
        copies = [line for line in said if "copying files instead" in line]
        assert len(copies) == 1 and "EXDEV" in copies[0]
        _no_partial_file(shm)
    finally:
        shutil.rmtree(shm)
