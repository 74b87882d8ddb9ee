"""Long steps log their progress to the Dagster run: count, percent, rate, time left, and a final line."""

import re

from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import processed, raw
from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.lib.progress import Progress
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources.cache import ContentCache
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

RATE = r"[\d,.]+ images/s, [\d.]+ [KMG]?B/s"


def _with_interval(settings, seconds):
    return PipelineSettings(**{**settings.model_dump(), "progress_seconds": seconds})


def _messages(instance, run_id):
    return [e.user_message for e in instance.all_logs(run_id) if e.user_message]


def test_an_ingestion_run_logs_progress_of_each_batch(lake, settings, write_batch):
    write_batch("day-a", n=14, seed=3)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["day-a"])
    every_item = _with_interval(settings, 0.0)
    result = materialize(
        [raw.raw_ingestion, processed.processing],
        instance=instance,
        partition_key="day-a",
        resources={"lake": lake, "pipeline_settings": every_item},
    )
    assert result.success
    messages = _messages(instance, result.run_id)

    ingest = [m for m in messages if m.startswith("ingest day-a: ")]
    counts = [int(re.match(r"ingest day-a: (\d+)/14 images", m).group(1)) for m in ingest]
    assert counts == [*range(1, 15), 14]  # one line per image (interval 0), then the final one
    for count, line in zip(counts, ingest[:-1]):
        assert re.fullmatch(rf"ingest day-a: {count}/14 images \({100 * count // 14} %\), {RATE}, [\d a-z]+ left", line)
    assert ingest[-2].endswith(", 0 s left")
    assert re.fullmatch(rf"ingest day-a: 14/14 images \(100 %\), {RATE}, done in \d+ s", ingest[-1])

    seen = [m for m in messages if m.startswith("processed day-a: ")]
    assert [int(re.match(r"processed day-a: (\d+)/14", m).group(1)) for m in seen] == [*range(1, 15), 14]
    assert re.fullmatch(r"processed day-a: 14/14 images \(100 %\), [\d,.]+ images/s, done in \d+ s", seen[-1])


def test_with_the_default_interval_a_short_step_logs_only_its_final_line(lake, settings, write_batch):
    write_batch("day-b", n=6, seed=4)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["day-b"])
    result = materialize(
        [raw.raw_ingestion],
        instance=instance,
        partition_key="day-b",
        resources={"lake": lake, "pipeline_settings": _with_interval(settings, 3600.0)},
    )
    assert result.success
    ingest = [m for m in _messages(instance, result.run_id) if m.startswith("ingest day-b: ")]
    assert len(ingest) == 1 and ingest[0].startswith("ingest day-b: 6/6 images (100 %), ")


def test_a_cache_fetch_counts_only_the_objects_it_reads(tmp_path):
    blobs = {f"processed/images/{i}.jpg": bytes([i]) * (1000 * (i + 1)) for i in range(4)}
    by_sha = {sha256_hex(data): key for key, data in blobs.items()}
    cache = ContentCache(tmp_path / "cache", max_bytes=1 << 30)
    first = dict(list(by_sha.items())[:1])
    cache.fetch(first, blobs.__getitem__)
    lines = []
    progress = Progress("stage gold 1a2b3c", emit=lines.append, every_s=3600)
    stats = cache.fetch(by_sha, blobs.__getitem__, progress=progress)
    assert (stats.fetched, progress.total, progress.count, progress.nbytes) == (3, 3, 3, 2000 + 3000 + 4000)
    assert len(lines) == 1 and lines[0].startswith("stage gold 1a2b3c: 3/3 images (100 %), ")
    silent = Progress("stage gold 1a2b3c", emit=lines.append, every_s=0)
    assert cache.fetch(by_sha, blobs.__getitem__, progress=silent).fetched == 0
    assert len(lines) == 1  # nothing to read: no line
