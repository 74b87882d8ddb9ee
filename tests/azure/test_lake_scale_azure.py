"""The lake at scale on Azurite: ingest → gold → staging gives what local disk gives, with two image writes per new
image and none for a known one; a new version is a manifest; a second staging fetches only the new images; a fetch
cut midway leaves nothing half-written in the cache."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from azurite import ACCOUNT_NAME
from tcp_proxy import CuttingProxy

from alumi_pipelines.assets.gold import build_gold, read_version_manifest, stage_gold
from alumi_pipelines.assets.processed import process_batch
from alumi_pipelines.assets.raw import ingest_landing_batch, write_landing_file
from alumi_pipelines.lib.files import file_sha256
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.azure import AzureLakeError
from alumi_pipelines.resources.azure import azure_lake as make_azure_lake
from alumi_pipelines.resources.cache import ContentCache
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import DEFAULT_CLASSES

pytestmark = pytest.mark.azure


@pytest.fixture
def settings(tmp_path):
    """Pipeline settings whose local cache (filled by ingestion, read by processing) is in the test's folder."""
    return PipelineSettings(
        classes=list(DEFAULT_CLASSES), image_size=160, workers=2, cache_dir=str(tmp_path / "ingest-cache")
    )


def _through(proxy: CuttingProxy, azure_env: dict, container: str, **options):
    env = {**azure_env, "ALUMI_AZURE_ACCOUNT_URL": f"http://127.0.0.1:{proxy.port}/{ACCOUNT_NAME}"}
    return make_azure_lake(
        f"abfs://{container}/lake", env=env, deferred=False, max_retries=2, retry_backoff_s=0.1, **options
    )


def _land_and_ingest(lake, settings, batch: str, n: int, seed: int) -> None:
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    write_landing_batch(
        lambda key, data: write_landing_file(lake, batch, key, data),
        batch,
        n,
        day=dt.date(2026, 11, 1 + seed),
        seed=seed,
        size=192,
    )
    ingest_landing_batch(lake, batch, settings)
    process_batch(lake, batch, settings)


def _image_puts(proxy: CuttingProxy, container: str) -> int:
    zones = tuple(f"/{ACCOUNT_NAME}/{container}/lake/{z}/images/" for z in ("raw", "processed"))
    return sum(1 for method, path in proxy.request_lines if method == "PUT" and path.startswith(zones))


def _staged_files(root) -> dict[str, bytes]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(root).as_posix()
        if rel == "data.yaml":  # holds the folder's absolute path: compare the rest
            doc = yaml.safe_load(path.read_bytes())
            files[rel] = yaml.safe_dump({k: v for k, v in doc.items() if k != "path"}).encode()
        else:
            files[rel] = path.read_bytes()
    return files


def test_ingest_gold_and_staging_on_azurite_match_local_disk(
    azurite, azure_env, container, tmp_path, settings, no_network
):
    on_disk = Lake(base_uri=str(tmp_path / "lake"))
    with CuttingProxy(azurite.port) as proxy:
        on_azure = _through(proxy, azure_env, container)
        _land_and_ingest(on_disk, settings, "day-1", 12, seed=1)
        proxy.reset_counts()
        _land_and_ingest(on_azure, settings, "day-1", 12, seed=1)
        images = len(on_azure.list_files(lake_keys.PROCESSED_IMAGES))
        assert images == 12
        assert _image_puts(proxy, container) == 2 * images  # one raw, one processed: no exists-then-write
        raw_reads = [p for m, p in proxy.request_lines if m == "GET" and "/lake/raw/images/" in p]
        assert raw_reads == []  # processing on the machine that ingested read the raw images from its cache
        assert proxy.requests["HEAD"] <= 8  # per step, not per image
        proxy.reset_counts()
        ingest_landing_batch(on_azure, "day-1", settings)  # the same batch again: the lake holds every image
        process_batch(on_azure, "day-1", settings)
        assert _image_puts(proxy, container) == 0

        first = {name: build_gold(lake, settings) for name, lake in (("disk", on_disk), ("azure", on_azure))}
        assert first["disk"].dataset_hash == first["azure"].dataset_hash
        prefix = first["azure"].prefix
        for key in (lake_keys.gold_manifest_key(prefix), lake_keys.gold_labels_key(prefix)):
            assert on_azure.read_bytes(key) == on_disk.read_bytes(key)
        assert not [f for f in on_azure.list_files(prefix) if "/images/" in f.key]  # no image copies

        caches = {name: ContentCache(tmp_path / f"cache-{name}", 1 << 30) for name in first}
        staged_disk = stage_gold(on_disk, prefix, tmp_path / "w-disk", cache=caches["disk"])
        proxy.reset_counts()
        staged_azure = stage_gold(on_azure, prefix, tmp_path / "w-azure", cache=caches["azure"])
        assert proxy.requests["GET"] > images  # every image was fetched once
        assert _staged_files(staged_azure) == _staged_files(staged_disk)  # the same training files
        proxy.reset_counts()
        assert stage_gold(on_azure, prefix, tmp_path / "w-again", cache=caches["azure"]) == staged_azure
        assert sum(proxy.requests.values()) == 0  # staged once: a later step of the run asks the lake nothing

        # one new day: the new version adds data.yaml, labels and a manifest (nothing derivable), and staging it
        # fetches only the new images
        _land_and_ingest(on_disk, settings, "day-2", 6, seed=2)
        _land_and_ingest(on_azure, settings, "day-2", 6, seed=2)
        proxy.reset_counts()
        second = build_gold(on_azure, settings)
        assert second.dataset_hash == build_gold(on_disk, settings).dataset_hash != first["azure"].dataset_hash
        version_files = on_azure.list_files(second.prefix)
        assert len(version_files) == 3 and proxy.requests["PUT"] == 3 + 1  # the version's files + current.json
        image_bytes = sum(f.size for f in on_azure.list_files(lake_keys.PROCESSED_IMAGES))
        assert sum(f.size for f in version_files) < image_bytes / 10
        proxy.reset_counts()
        new_root = stage_gold(on_azure, second.prefix, tmp_path / "w2", cache=caches["azure"])
        new_images = [line for line in proxy.request_lines if "/processed/images/" in line[1]]
        assert len(new_images) == 6  # only the new day's images were fetched
        assert _staged_files(new_root) == _staged_files(stage_gold(on_disk, second.prefix, tmp_path / "w3"))
        # training on the machine that ingested: processing left every processed image in its cache
        proxy.reset_counts()
        stage_gold(on_azure, second.prefix, tmp_path / "w4", cache=settings.cache())
        assert not [line for line in proxy.request_lines if "/lake/processed/images/" in line[1]]
    assert no_network == []


def test_a_staging_fetch_cut_midway_leaves_no_partial_file_and_the_next_run_completes(
    azurite, azure_env, container, azure_lake, tmp_path, settings
):
    _land_and_ingest(azure_lake, settings, "day-1", 16, seed=3)
    info = build_gold(azure_lake, settings)
    cache = ContentCache(tmp_path / "cache", 1 << 30)
    image_bytes = sum(f.size for f in azure_lake.list_files(lake_keys.PROCESSED_IMAGES))
    # the downloads die about half way through the images (one transfer at a time: a cut inside a body)
    with CuttingProxy(azurite.port, cut_after=40_000 + image_bytes // 2, then="die", direction="down") as proxy:
        lake = _through(proxy, azure_env, container, concurrency=1)
        with pytest.raises(AzureLakeError, match="did not answer"):
            stage_gold(lake, info.prefix, tmp_path / "w1", cache=cache)
        assert proxy.cuts == 1
    objects = [p for p in cache.objects.rglob("*") if p.is_file()]
    assert 0 < len(objects) < 16
    for path in objects:  # every file under an object's name holds exactly the bytes of that name
        assert path.name.startswith(".tmp-") or file_sha256(path) == path.name

    root = stage_gold(azure_lake, info.prefix, tmp_path / "w2", cache=cache)  # the next run completes
    manifest = read_version_manifest(azure_lake, info.prefix)
    for row in manifest.iter_rows(named=True):
        assert file_sha256(root / row["file"]) == row["sha256"]
    assert len([p for p in cache.objects.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]) == 16
