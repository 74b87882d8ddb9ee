"""The lake at scale: Azurite behind a TCP proxy that adds a round-trip delay, against local disk, in one run.

For each added round-trip delay (default 0, 10 and 30 ms) it prints:

- ingest: one landing batch (raw + processed, the two steps of ingestion_job) into an empty lake; wall time on
  local disk and on Azurite, the throughput ratio, and the HTTP requests per image the proxy carried (by method,
  and the writes of images); then the same batch again, which the lake already holds (image writes should be 0);
  the storage server and the proxy share this machine's cores, so it also prints the CPU-bound ceiling of the
  ratio: for this client, and for any client (local disk's CPU plus the server's);
- a new gold version after one new day (about 5 % more images) with 1 and with 20 days in the lake: the files and
  bytes the version adds to the lake (its folder, listed) and the requests made while building it;
- staging that version for a second retrain on the same machine (the first retrain staged the previous version):
  the bytes the proxy carried down and the time.

Lakes are filled with no added delay (filling is not measured); each delay then adds its own new day to the same
lakes, so the 20-day lake holds 21, 22, … days by the later rows (its size is printed). Counts and bytes do not
depend on the machine; times are noisy on a shared machine: compare ratios from the same run.

    .venv/bin/python benchmarks/bench_lake_scale.py                   # needs Node.js + Azurite
    .venv/bin/python benchmarks/bench_lake_scale.py --delays 0 10 --images 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "azure"))


def _image_prefixes() -> tuple[str, str]:
    """The raw and processed image folders of the lake (as the keys module of the code under test spells them)."""
    from alumi_pipelines.resources import lake_keys

    sample = "ab" + "0" * 62
    return tuple(
        k(sample).rsplit("/", 2)[0] + "/"
        for k in (lambda s: lake_keys.raw_image_key(s, ".jpg"), lake_keys.processed_image_key)
    )


def _settings(size: int, cache_dir: Path):
    """Settings of the code under test; ingestion's local cache (where the code has one) in ``cache_dir``, apart
    from the staging caches: staging is measured as on a machine that did not ingest."""
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import DEFAULT_CLASSES

    fields = {"classes": list(DEFAULT_CLASSES), "image_size": size, "min_image_side": 32, "workers": 0}
    if "cache_dir" in PipelineSettings.model_fields:
        fields["cache_dir"] = str(cache_dir)
    return PipelineSettings(**fields)


def _land(lake, batch: str, n: int, day: int, land_size: int) -> None:
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    write_landing_batch(
        lambda key, data: write_landing_file(lake, batch, key, data),
        batch,
        n,
        day=dt.date(2026, 1, 1) + dt.timedelta(days=day),
        seed=day,
        size=land_size,
    )


def _ingest(lake, batch: str, settings) -> None:
    from alumi_pipelines.assets.processed import process_batch
    from alumi_pipelines.assets.raw import ingest_landing_batch

    ingest_landing_batch(lake, batch, settings)
    process_batch(lake, batch, settings)


def _stage(lake, prefix: str, work: Path, cache_dir: Path) -> Path:
    """stage_gold as each version of the code offers it: with the local cache when it has one."""
    from alumi_pipelines.assets.gold import stage_gold

    if "cache" in inspect.signature(stage_gold).parameters:
        from alumi_pipelines.resources.cache import ContentCache

        return stage_gold(lake, prefix, work, cache=ContentCache(cache_dir, max_bytes=1 << 40))
    return stage_gold(lake, prefix, work)


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class Measure:
    """Requests and bytes through the proxy, wall time, this process's CPU time and the CPU time of the storage
    server and the proxy (``servers``: their pids; they share this machine's cores with the client), of one block."""

    servers: list[int] = []

    def __init__(self, proxy):
        self.proxy = proxy

    def __enter__(self):
        if self.proxy is not None:
            self.proxy.reset_counts()
        self.server_started = [_cpu_of([pid]) for pid in self.servers] if self.proxy is not None else []
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu_started
        self.server_cpu = [_cpu_of([pid]) - t for pid, t in zip(self.servers, self.server_started)] or [0.0, 0.0]
        counts = self.proxy.counts() if self.proxy is not None else {}
        self.requests = counts.get("requests", {})
        self.lines = [tuple(line) for line in counts.get("request_lines", [])]
        self.up, self.down = counts.get("bytes_up", 0), counts.get("bytes_down", 0)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def image_reads(self) -> int:
        """GETs of image files (processed images, or a copy-style version's copies)."""
        return sum(1 for method, path in self.lines if method == "GET" and "/images/" in path.split("?")[0])

    def image_writes(self, container_path: str) -> int:
        return sum(
            1
            for method, path in self.lines
            if method == "PUT" and path.split("?")[0].startswith(tuple(container_path + p for p in _image_prefixes()))
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 10.0, 30.0], help="added round trip, ms")
    parser.add_argument("--images", type=int, default=30, help="images per day (the ingested batch: twice this)")
    parser.add_argument("--days", type=int, default=20, help="days in the larger lake")
    parser.add_argument("--land-size", type=int, default=256, help="side of the landed images")
    parser.add_argument("--size", type=int, default=192, help="processed longest side")
    args = parser.parse_args()
    from azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer, AzuriteUnavailable
    from tcp_proxy import ProxyProcess

    from alumi_pipelines.resources import lake_keys
    from alumi_pipelines.resources.azure import azure_lake
    from alumi_pipelines.resources.lake import Lake

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = _settings(args.size, tmp / "ingest-cache")
        try:
            azurite = AzuriteServer(tmp / "azurite").start()
        except AzuriteUnavailable as exc:
            print(f"skipping: {exc}")
            return 0
        proxy = ProxyProcess(azurite.port)  # the network is not in this process: its threads take no GIL from us
        Measure.servers = [azurite.process.pid, proxy.pid]
        env = {
            "ALUMI_AZURE_ACCOUNT_NAME": ACCOUNT_NAME,
            "ALUMI_AZURE_ACCOUNT_KEY": ACCOUNT_KEY,
            "ALUMI_AZURE_ACCOUNT_URL": f"http://127.0.0.1:{proxy.port}/{ACCOUNT_NAME}",
        }
        counter = iter(range(10_000))

        def fresh_azure():
            name = f"bench-{next(counter)}"
            azurite.create_container(name)
            return azure_lake(f"abfs://{name}/lake", env=env, deferred=False), f"/{ACCOUNT_NAME}/{name}/lake/"

        def fresh_local():
            return Lake(base_uri=str(tmp / f"lake-{next(counter)}"))

        # -- lakes of 1 and of `days` days, each with a first gold version staged once (the first retrain) --
        proxy.delay_s = 0.0
        started = time.perf_counter()
        lakes = {}
        for days in (1, args.days):
            azure, _ = fresh_azure()
            local = fresh_local()
            for lake in (azure, local):
                for day in range(days):
                    _land(lake, f"day-{day:03d}", args.images, day, args.land_size)
                    _ingest(lake, f"day-{day:03d}", settings)
            lakes[days] = {"Azurite": azure, "local disk": local, "next_day": days}
            for name, lake in lakes[days].items():
                if name in ("Azurite", "local disk"):
                    info = _build_gold(lake, settings)
                    _stage(lake, info.prefix, tmp / f"work-{next(counter)}", tmp / f"cache-{name}-{days}")
        print(f"(filled the lakes in {time.perf_counter() - started:.0f} s)")

        ingest_rows, gold_rows = [], []
        for delay in args.delays:
            # -- ingest ------------------------------------------------------------------------------
            batch, n = "ingest", args.images * 2
            local = fresh_local()
            _land(local, batch, n, 500, args.land_size)
            with Measure(None) as on_disk:
                _ingest(local, batch, settings)
            azure, container_path = fresh_azure()
            proxy.delay_s = 0.0
            _land(azure, batch, n, 500, args.land_size)
            proxy.delay_s = delay / 1000
            with Measure(proxy) as first:
                _ingest(azure, batch, settings)
            with Measure(proxy) as again:
                _ingest(azure, batch, settings)
            ingest_rows.append((delay, n, on_disk, first, again, container_path))

            # -- a new day, a new gold version, staging it for the second retrain -------------------
            for days, entry in lakes.items():
                day = entry["next_day"]
                entry["next_day"] += 1
                row = {"delay": delay, "days": day + 1}
                for name in ("local disk", "Azurite"):
                    lake = entry[name]
                    proxy.delay_s = 0.0
                    _land(lake, f"day-{day:03d}", args.images, day, args.land_size)
                    _ingest(lake, f"day-{day:03d}", settings)
                    proxy.delay_s = delay / 1000 if name == "Azurite" else 0.0
                    with Measure(proxy if name == "Azurite" else None) as built:
                        info = _build_gold(lake, settings)
                    proxy.delay_s = 0.0
                    folder = lake.list_files(info.prefix)
                    images = sum(f.size for f in lake.list_files(lake_keys.PROCESSED_IMAGES))
                    raw_images = sum(f.size for f in lake.list_files(_image_prefixes()[0].rstrip("/")))
                    proxy.delay_s = delay / 1000 if name == "Azurite" else 0.0
                    with Measure(proxy if name == "Azurite" else None) as staged:
                        _stage(lake, info.prefix, tmp / f"work-{next(counter)}", tmp / f"cache-{name}-{days}")
                    proxy.delay_s = 0.0
                    row[name] = {
                        "images": sum(info.counts.values()),
                        "image_bytes": images,
                        "all_image_bytes": images + raw_images,
                        "files": len(folder),
                        "bytes": sum(f.size for f in folder),
                        "build": built,
                        "stage": staged,
                    }
                gold_rows.append(row)
        proxy.stop()
        azurite.stop()

    print("\ningest of one batch into an empty lake (raw + processed), then the same batch again")
    head = (
        f"{'delay ms':>8} {'images':>6} {'local s':>8} {'Azurite s':>9} {'throughput':>10} {'req/image':>9} "
        f"{'GET':>5} {'PUT':>5} {'HEAD':>5} {'image PUTs':>10} {'again: req':>10} {'image PUTs':>10} "
        f"{'client CPU ms/req':>17} {'client CPU s':>12} {'server CPU s':>12} {'proxy CPU s':>11} "
        f"{'CPU floor s':>11} {'ceiling':>7} {'any client':>10}"
    )
    print(head + "\n" + "-" * len(head))
    for delay, n, on_disk, first, again, path in ingest_rows:
        print(
            f"{delay:>8.0f} {n:>6} {on_disk.seconds:>8.2f} {first.seconds:>9.2f} "
            f"{on_disk.seconds / first.seconds:>9.0%} {first.total / n:>9.2f} {first.requests.get('GET', 0):>5} "
            f"{first.requests.get('PUT', 0):>5} {first.requests.get('HEAD', 0):>5} {first.image_writes(path):>10} "
            f"{again.total:>10} {again.image_writes(path):>10} {1000 * first.cpu / max(first.total, 1):>17.2f} "
            f"{first.cpu:>12.2f} {first.server_cpu[0]:>12.2f} {first.server_cpu[1]:>11.2f} "
            f"{_cpu_floor(first):>11.2f} {on_disk.seconds / _cpu_floor(first):>7.0%} "
            f"{on_disk.seconds / _cpu_floor(first, client_cpu=on_disk.cpu, proxy=False):>10.0%}"
        )
    print(
        "(local s: the same batch on local disk. Client CPU includes decoding and encoding the images; the storage "
        "server and the proxy run on the same cores, so the ingest cannot finish before (client + server + proxy "
        f"CPU) / {os.cpu_count()} cores, the CPU floor; ceiling: the throughput ratio at that floor; any client: the "
        "ceiling for a client that spends no more CPU than local disk's ingest and no proxy, i.e. the storage "
        "server's CPU alone added to the work itself)"
    )
    print("\na new gold version after one new day, then staging it for the second retrain (same machine)")
    head = (
        f"{'delay ms':>8} {'days':>4} {'images':>6} {'processed MB':>12} {'raw+proc MB':>11} {'version files':>13} "
        f"{'version KB':>10} {'of processed':>12} {'of raw+proc':>11} {'build req':>9} {'build s':>7} {'local s':>7} "
        f"{'stage KB down':>13} {'image GETs':>10} {'stage s':>7} {'local s':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for row in gold_rows:
        a, d = row["Azurite"], row["local disk"]
        print(
            f"{row['delay']:>8.0f} {row['days']:>4} {a['images']:>6} {a['image_bytes'] / 1e6:>12.2f} "
            f"{a['all_image_bytes'] / 1e6:>11.2f} {a['files']:>13} {a['bytes'] / 1e3:>10.1f} "
            f"{a['bytes'] / a['image_bytes']:>12.2%} {a['bytes'] / a['all_image_bytes']:>11.2%} {a['build'].total:>9} "
            f"{a['build'].seconds:>7.2f} {d['build'].seconds:>7.2f} {a['stage'].down / 1e3:>13.1f} "
            f"{a['stage'].image_reads():>10} {a['stage'].seconds:>7.2f} {d['stage'].seconds:>7.2f}"
        )
    return 0


def _cpu_floor(m: Measure, client_cpu: float | None = None, proxy: bool = True) -> float:
    """The shortest wall time the CPU measured in ``m`` fits in on this machine's cores (client, storage server and
    proxy share them); ``client_cpu`` in place of the client's measured CPU, ``proxy=False`` without the proxy's."""
    server, proxy_cpu = m.server_cpu
    client = m.cpu if client_cpu is None else client_cpu
    return (client + server + (proxy_cpu if proxy else 0.0)) / (os.cpu_count() or 1)


def _build_gold(lake, settings):
    from alumi_pipelines.assets.gold import build_gold

    return build_gold(lake, settings)


if __name__ == "__main__":
    sys.exit(main())
