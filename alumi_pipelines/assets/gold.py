"""Gold zone: the training-ready dataset, split and laid out for YOLO, named by its content hash.

``gold_dataset`` calls :func:`build_gold`: the processed zone and the applied corrections in, the plan
(dedup, conflicts, stable split, hash) from ``lib.vision.gold``, the dataset folder out.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from alumi_pipelines.assets.metadata import histogram_md
from alumi_pipelines.assets.pictures import gold_samples
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.lib.files import write_if_absent
from alumi_pipelines.lib.vision.splits import SPLITS
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake, check_key
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

if TYPE_CHECKING:
    from alumi_pipelines.resources.cache import ContentCache


@asset(
    deps=["processed_images", "processed_labels", "label_corrections"],
    group_name="gold",
    owners=["team:data-science"],
    kinds={"parquet", "yaml"},
    description="Every labelled image once (exact duplicates collapse to one image), one label set each "
    "(conflicts reported), a stable class-stratified train/val/test split, YOLO layout with data.yaml and "
    "a manifest; the folder is named by the dataset's content hash and gold/current.json points to it.",
)
def gold_dataset(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings) -> MaterializeResult:
    info = build_gold(lake, pipeline_settings)
    for conflict in info.conflicts[:20]:
        context.log.warning(
            f"conflicting labels for identical image {conflict['image_id'][:12]}: kept {conflict['kept']}, "
            f"ignored {conflict['other']}"
        )
    totals = {c: sum(info.class_counts[s][c] for s in info.class_counts) for c in info.classes}
    split_md = "| split | images | " + " | ".join(info.classes) + " |\n|---|---:|" + "---:|" * len(info.classes) + "\n"
    for s, n in info.counts.items():
        split_md += f"| {s} | {n} | " + " | ".join(str(info.class_counts[s][c]) for c in info.classes) + " |\n"
    return MaterializeResult(
        metadata={
            "dataset_hash": info.dataset_hash,
            "images": sum(info.counts.values()),
            **{f"{s}_images": n for s, n in info.counts.items()},
            "split_fractions": "/".join(f"{f:g}" for f in info.split_fractions),
            "label_conflicts": len(info.conflicts),
            "held_out_images": len(info.held_out),
            "held_out": MetadataValue.md(held_out_md(info.held_out)),
            "reused_existing": info.reused,
            "class_histogram": MetadataValue.md(histogram_md(totals)),
            "splits": MetadataValue.md(split_md),
            "data_yaml": MetadataValue.path(lake.uri(lake_keys.gold_data_yaml_key(info.prefix))),
            **gold_samples(lake, info.prefix, info.classes),
        },
    )


def held_out_md(held_out: list[dict], limit: int = 20) -> str:
    """Markdown list of the images held out of gold (rejected annotation records) and why."""
    if not held_out:
        return "none: every labelled image's annotation was read in full"
    lines = ["| image | batch | reason |", "|---|---|---|"]
    for h in held_out[:limit]:
        lines.append(f"| {h['image_id'][:12]} | {h['batch']} | {h['reason'].replace('|', '/')} |")
    if len(held_out) > limit:
        lines.append(f"| … | | {len(held_out) - limit} more |")
    lines.append("")
    lines.append("Each is listed in its batch's quarantine table (with its annotation file) and stays in processed as")
    lines.append("an unlabelled image: a correction that labels it (label_corrections) brings it into gold.")
    return "\n".join(lines)


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="No image (by content hash) appears in more than one split of the current gold dataset. "
    "Failing means test scores would be inflated by training images.",
)
def no_split_leakage(context: AssetCheckExecutionContext, lake: Lake) -> AssetCheckResult:
    import polars as pl

    manifest = read_gold_manifest(lake)
    leaked = manifest.group_by("image_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
    if leaked.height:
        context.log.error(f"blocking check no_split_leakage failed: {leaked.height} images are in more than one split")
    return AssetCheckResult(
        passed=leaked.is_empty(),
        metadata={
            "images": manifest.height,
            "leaked_images": leaked.height,
            "examples": MetadataValue.text(", ".join(leaked["image_id"].head(5).to_list())),
        },
    )


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="Train and val are non-empty and every class has training boxes. Failing means a model "
    "trained now could not learn or be evaluated on some class.",
)
def splits_cover_classes(context: AssetCheckExecutionContext, lake: Lake) -> AssetCheckResult:
    pointer = read_gold_pointer(lake)
    missing = [c for c in pointer["classes"] if pointer["class_counts"]["train"].get(c, 0) == 0]
    empty = [s for s in ("train", "val") if pointer["counts"].get(s, 0) == 0]
    if missing or empty:  # said in the run's log too, so `dagster job execute` prints why it stopped
        context.log.error(
            "blocking check splits_cover_classes failed: "
            + (
                f"no training boxes for {', '.join(missing)} (classes {', '.join(pointer['classes'])}); "
                if missing
                else ""
            )
            + (f"empty split(s) {', '.join(empty)}; " if empty else "")
            + "label those classes, or remove them from the class map (`alumi classes`, ALUMI_CLASSES)"
        )
    return AssetCheckResult(
        passed=not missing and not empty,
        metadata={
            "classes_without_train_boxes": MetadataValue.text(", ".join(missing) or "none"),
            "empty_splits": MetadataValue.text(", ".join(empty) or "none"),
            **{f"{s}_images": n for s, n in pointer["counts"].items()},
        },
    )


@asset_check(
    asset=gold_dataset,
    blocking=False,
    description="Identical images (same bytes) that arrived with different label sets. Warns: one set was "
    "kept (the earliest batch), the others need a QA look.",
)
def identical_images_label_conflicts(lake: Lake) -> AssetCheckResult:
    pointer = read_gold_pointer(lake)
    n = int(pointer.get("conflicts", 0))
    return AssetCheckResult(passed=n == 0, severity=AssetCheckSeverity.WARN, metadata={"conflicts": n})


# -- processed + corrections → gold (zone I/O) ----------------------------------------------------
@dataclass
class GoldInfo:
    dataset_hash: str
    prefix: str
    classes: list[str]
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    conflicts: list[dict] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    reused: bool = False
    held_out: list[dict] = field(default_factory=list)
    split_fractions: tuple[float, ...] = ()

    def pointer(self) -> dict:
        return {
            "dataset_hash": self.dataset_hash,
            "prefix": self.prefix,
            "classes": self.classes,
            "counts": self.counts,
            "class_counts": self.class_counts,
            "conflicts": len(self.conflicts),
            "held_out": len(self.held_out),
        }


def split_fractions(lake: Lake, settings: PipelineSettings) -> tuple[float, float, float]:
    """The lake's train/val/test fractions (``meta/splits.json``), recorded on the first gold build or when
    ALUMI_SPLIT_FRACTIONS changes them, so the lake's images keep their splits from one version to the next."""
    from alumi_pipelines.lib.vision.splits import lake_fractions

    record = lake.read_json(lake_keys.SPLIT_SETTINGS) if lake.exists(lake_keys.SPLIT_SETTINGS) else None
    recorded = record.get("fractions") if record else None
    fractions, source = lake_fractions(recorded, settings.split_fractions, has_gold=lake.exists(lake_keys.GOLD_POINTER))
    if recorded is None or [round(f, 6) for f in recorded] != [round(f, 6) for f in fractions]:
        lake.write_json(lake_keys.SPLIT_SETTINGS, {"fractions": list(fractions), "source": source})
    return fractions


def build_gold(lake: Lake, settings: PipelineSettings) -> GoldInfo:
    """All processed batches (+ applied corrections) → a split YOLO dataset named by its content hash."""
    import polars as pl

    from alumi_pipelines.lib.vision import gold
    from alumi_pipelines.lib.vision.corrections import corrected_labels

    features, labels = read_processed(lake)
    if lake.exists(lake_keys.CORRECTIONS_OVERLAY) and lake.exists(lake_keys.CORRECTIONS_CHANGES):
        changes = lake.read_table(lake_keys.CORRECTIONS_CHANGES)
        labels = corrected_labels(labels, lake.read_table(lake_keys.CORRECTIONS_OVERLAY), changes)
        # an image a correction touched is labelled from now on, even if it arrived unlabelled or held out
        touched = changes["image_id"].unique().implode()
        features = features.with_columns(pl.col("labelled") | pl.col("image_id").is_in(touched))
        if "held_out" in features.columns:
            features = features.with_columns(
                pl.when(pl.col("image_id").is_in(touched))
                .then(pl.lit(""))
                .otherwise(pl.col("held_out"))
                .alias("held_out")
            )
    fractions = split_fractions(lake, settings)
    plan = gold.plan_dataset(features, labels, list(settings.classes), seed=settings.split_seed, fractions=fractions)
    prefix = lake_keys.gold_prefix(plan.dataset_hash)
    info = GoldInfo(
        dataset_hash=plan.dataset_hash,
        prefix=prefix,
        classes=list(settings.classes),
        counts=plan.counts,
        class_counts=plan.class_counts,
        conflicts=plan.conflicts,
        moved=plan.moved,
        held_out=plan.held_out,
        split_fractions=tuple(fractions),
    )
    manifest_key = lake_keys.gold_manifest_key(prefix)
    if lake.exists(manifest_key):
        info.reused = True
    else:
        write_gold_version(lake, prefix, plan, features, list(settings.classes))
    lake.write_json(lake_keys.GOLD_POINTER, {**info.pointer(), "updated_at": dt.datetime.now(dt.UTC).isoformat()})
    return info


def write_gold_version(lake: Lake, prefix: str, plan, features, classes: list[str]) -> None:
    """A version's files: data.yaml and the label table, then the manifest (written last: its presence means
    complete). No image is copied: each manifest row holds the sha256 of its processed image, which staging
    verifies. Nothing derivable is stored: the image's paths and lake key follow from image_id and split, a
    label names its image by manifest row, and staging writes the YOLO list files (see :func:`read_version`)."""
    import polars as pl
    import yaml

    from alumi_pipelines.lib.vision import gold

    manifest = plan.manifest.with_columns(
        pl.col("image_id").map_elements(lake_keys.processed_image_key, return_dtype=pl.Utf8).alias("image_key")
    )
    stored = _stored_images(lake, features, manifest)
    manifest = manifest.join(stored, on="image_id", how="left").sort(["split", "image_id"])
    data_yaml = yaml.safe_dump(gold.data_yaml_doc(classes), sort_keys=False)
    lake.write_bytes(lake_keys.gold_data_yaml_key(prefix), data_yaml.encode())
    _write_version_table(lake, lake_keys.gold_labels_key(prefix), gold.stored_labels(plan.labels, manifest))
    # written last: its presence means complete
    _write_version_table(lake, lake_keys.gold_manifest_key(prefix), gold.stored_manifest(manifest))


def _write_version_table(lake: Lake, key: str, table) -> None:
    """A version's table as Parquet (zstd) without column statistics or a copy of the Arrow schema in the footer:
    a version's tables are always read whole, the statistics (min/max of 64-hex columns, in the footer and the
    page index) are a fifth of a small version's bytes, and Parquet's own types read back the same columns.
    Byte-for-byte reproducible, written atomically like every lake write."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table.to_arrow(), buf, compression="zstd", write_statistics=False, store_schema=False)
    lake.write_bytes(key, buf.getvalue())


def _stored_images(lake: Lake, features, manifest):
    """(image_id, sha256, bytes) of each processed image of ``manifest``: from the processed features tables, or
    for batches processed before they recorded it, by reading the image once (concurrently)."""
    import polars as pl

    from alumi_pipelines.lib.files import sha256_hex

    schema = {"image_id": pl.Utf8, "sha256": pl.Utf8, "bytes": pl.Int64}
    known = pl.DataFrame(schema=schema)
    if "processed_sha256" in features.columns:
        known = (
            features.filter(pl.col("processed_sha256").is_not_null())
            .select("image_id", pl.col("processed_sha256").alias("sha256"), pl.col("processed_bytes").alias("bytes"))
            .unique(subset=["image_id"], keep="first", maintain_order=True)
            .cast(schema)
        )
    missing = manifest.filter(~pl.col("image_id").is_in(known["image_id"].implode()))
    if missing.is_empty():
        return known

    def digest(row: tuple[str, str]) -> tuple[str, str, int]:
        data = lake.read_bytes(row[1])
        return row[0], sha256_hex(data), len(data)

    found = lake.map(digest, list(missing.select("image_id", "image_key").iter_rows()))
    return pl.concat([known, pl.DataFrame(found, schema=schema, orient="row")])


def read_gold_pointer(lake: Lake) -> dict:
    if not lake.exists(lake_keys.GOLD_POINTER):
        raise FileNotFoundError(f"{lake_keys.GOLD_POINTER}: no gold dataset yet; materialise gold_dataset first")
    return lake.read_json(lake_keys.GOLD_POINTER)


def read_gold_manifest(lake: Lake):
    return read_version_manifest(lake, read_gold_pointer(lake)["prefix"])


def read_version_manifest(lake: Lake, prefix: str, keep_at: Path | None = None):
    """The manifest of the version at ``prefix`` as every reader sees it: image_id, split, file, label_file,
    width, height, n_boxes, classes (+ image_key, sha256, bytes of a manifest version), the derived columns
    filled in when the version does not store them. ``keep_at``: a local copy of the stored table, read once
    (a manifest version's files never change)."""
    from alumi_pipelines.lib.vision import gold

    key = lake_keys.gold_manifest_key(prefix)
    if keep_at is None:
        stored = lake.read_table(key)
    else:
        stored = _cached_table(lake, key, keep_at, keep_if=gold.is_manifest_version)
    return gold.expand_manifest(stored, lake_keys.processed_image_key, source=lake.uri(key))


def read_version_labels(lake: Lake, prefix: str, manifest, keep_at: Path | None = None):
    """The label table of the version at ``prefix``, one row per box with its image_id and split, in the stored
    order; ``manifest`` is that version's whole manifest (from :func:`read_version_manifest`)."""
    from alumi_pipelines.lib.vision import gold

    key = lake_keys.gold_labels_key(prefix)
    stored = lake.read_table(key) if keep_at is None else _cached_table(lake, key, keep_at)
    return gold.expand_labels(stored, manifest, source=lake.uri(key))


def read_version(lake: Lake, prefix: str):
    """(manifest, labels) of the version at ``prefix``: how every reader of a gold version gets them."""
    manifest = read_version_manifest(lake, prefix)
    return manifest, read_version_labels(lake, prefix, manifest)


def gold_prefix_for(lake: Lake, dataset_hash: str | None) -> str:
    """The gold folder of ``dataset_hash`` while it is complete in the lake (its manifest), else the current one."""
    own = lake_keys.gold_prefix(dataset_hash) if dataset_hash else None
    if own and lake.exists(lake_keys.gold_manifest_key(own)):
        return own
    return read_gold_pointer(lake)["prefix"]


def stage_gold(
    lake: Lake,
    prefix: str,
    work: Path,
    splits: tuple[str, ...] = SPLITS,
    only: set[str] | None = None,
    cache: "ContentCache | None" = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A gold dataset version as a local YOLO folder (``data.yaml``, ``images/<split>/``, ``labels/<split>/``).

    A version written as a manifest is staged once per machine into ``cache`` (default: one under ``work``):
    the folder ``datasets/<hash>`` of hard links to the cache's content-addressed objects (a local lake's own
    files), label files from the version's label table, the YOLO list files from its manifest. Only images
    missing from the cache are read, through the lake's bounded pool, each checked against its sha256. Later
    steps and runs that stage the same version find it ready (no lake request). ``only`` (gold-relative image
    paths) narrows the images staged. Treat the folder as read-only (training mirrors it with links before
    writing label caches). The version is staged under the cache's lease on it, so processes sharing the cache
    (pods on one volume) stage it at once safely and none evicts it meanwhile (``resources/cache.py``).

    A version written with image copies (before manifests) is read as before: the lake's own folder when the
    lake is local, else a copy under ``work``.
    """
    from alumi_pipelines.resources.cache import ContentCache

    cache = cache or ContentCache(work / "cache", max_bytes=1 << 62)
    with cache.lease(PurePosixPath(prefix).name):
        return _stage_in_cache(lake, prefix, work, splits, only, cache, log)


def _stage_in_cache(
    lake: Lake,
    prefix: str,
    work: Path,
    splits: tuple[str, ...],
    only: set[str] | None,
    cache: "ContentCache",
    log: Callable[[str], None] | None,
) -> Path:
    import polars as pl

    from alumi_pipelines.lib.progress import Progress
    from alumi_pipelines.lib.vision import gold
    from alumi_pipelines.resources.cache import link_or_copy

    name = PurePosixPath(prefix).name
    root = cache.dataset_dir(name)
    wanted_splits = [s for s in splits if only is not None or not (root / f".staged-{s}").exists()]
    if only is not None:
        wanted_splits = [s for s in wanted_splits if any(not (root / rel).exists() for rel in only if _in(rel, s))]
    if not wanted_splits:  # staged before, by this run or an earlier one
        cache.touch(root)
        _say(log, f"gold {name}: already staged in {root}")
        return root

    manifest = read_version_manifest(lake, prefix, keep_at=root / "manifest.parquet")
    if not gold.is_manifest_version(manifest):
        return _stage_copies(lake, prefix, work, splits, only)
    labels = read_version_labels(lake, prefix, manifest, keep_at=root / "labels.parquet")
    rows = manifest.filter(pl.col("split").is_in(wanted_splits))
    if only is not None:
        rows = rows.filter(pl.col("file").is_in(sorted(only)))
    cache.touch(root)

    local = lake.local_path(prefix)
    fetched = None
    if local is None:
        progress = Progress(f"stage gold {name[:12]}", emit=log) if log is not None else None
        fetched = cache.fetch(dict(zip(rows["sha256"], rows["image_key"])), lake.read_bytes, lake.map, progress)
    texts = gold.label_texts(labels, rows["image_id"].to_list())
    for image_id, file, label_file, image_key, sha in rows.select(
        "image_id", "file", "label_file", "image_key", "sha256"
    ).iter_rows():
        # the label first: an image present in the folder always has its label file ('..' in a path is refused)
        write_if_absent(root / check_key(label_file), texts[image_id].encode(), fsync=False)
        source = lake.local_path(image_key) if local is not None else cache.object_path(sha)
        link_or_copy(source, root / check_key(file), log)
    for split, rel in gold.LIST_FILES.items():  # from the manifest (a version's own copies, if any, say the same)
        if not (root / rel).exists():
            write_if_absent(root / rel, gold.list_file_text(manifest, split).encode(), fsync=False)
    if not (root / "data.yaml").exists():  # an absolute path: the folder is read from anywhere
        import yaml

        doc = yaml.safe_load(lake.read_bytes(lake_keys.gold_data_yaml_key(prefix))) or {}
        data = yaml.safe_dump({**doc, "path": str(root)}, sort_keys=False).encode()
        write_if_absent(root / "data.yaml", data, fsync=False)
    if only is None:
        for split in wanted_splits:
            (root / f".staged-{split}").touch()
    evicted = cache.prune(keep={name})
    if fetched is not None:
        _say(
            log,
            f"gold {name}: staged {rows.height} images of {', '.join(wanted_splits)} in {root}: {fetched.fetched} "
            f"fetched ({fetched.fetched_bytes} bytes), {fetched.hits} already cached"
            + (f"; evicted {len(evicted)} cache entries" if evicted else ""),
        )
    return root


def gold_image_keys(lake: Lake, prefix: str) -> dict[str, str]:
    """Each image of a version, its gold-relative path (``images/<split>/<id>.jpg``) → the lake key holding its
    bytes (the processed image for a manifest version, the copy in the version's folder for an older one)."""
    from alumi_pipelines.lib.vision.gold import is_manifest_version

    manifest = read_version_manifest(lake, prefix)
    if is_manifest_version(manifest):
        return dict(zip(manifest["file"].to_list(), manifest["image_key"].to_list()))
    return {rel: lake_keys.gold_file_key(prefix, rel) for rel in manifest["file"].to_list()}


def _in(rel: str, split: str) -> bool:
    return rel.startswith(f"images/{split}/")


def _say(log: Callable[[str], None] | None, text: str) -> None:
    if log is not None:
        log(text)


def _cached_table(lake: Lake, key: str, path: Path, keep_if: Callable | None = None):
    """An immutable lake table, read once and kept at ``path`` (a version's manifest and labels never change);
    not kept when ``keep_if`` says no."""
    import io

    import polars as pl

    if path.exists():
        return pl.read_parquet(path)
    try:
        data = lake.read_bytes(key)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"gold dataset {key.rsplit('/', 1)[0]}: no such complete version in the lake") from exc
    table = pl.read_parquet(io.BytesIO(data))
    if keep_if is None or keep_if(table):
        write_if_absent(path, data, fsync=False)
    return table


def _stage_copies(lake: Lake, prefix: str, work: Path, splits: tuple[str, ...], only: set[str] | None) -> Path:
    """A version written with image copies: the lake's own folder when local, else its files copied under
    ``work`` (the prefix listed once, the files fetched concurrently)."""
    local = lake.local_path(prefix)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"gold dataset {prefix}: no such folder in the lake")
        return local
    root = work / "gold"
    files = {f.key[len(prefix) + 1 :] for f in lake.list_files(prefix)}
    if not files:
        raise FileNotFoundError(f"gold dataset {prefix}: no such folder in the lake")
    wanted = ["data.yaml"] if "data.yaml" in files else []
    for split in splits:
        images = sorted(r for r in files if r.startswith(f"images/{split}/") and (only is None or r in only))
        for rel in images:
            label = "labels/" + str(PurePosixPath(rel).relative_to("images").with_suffix(".txt"))
            wanted += [rel, *([label] if label in files else [])]

    def copy(rel: str) -> None:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lake.read_bytes(lake_keys.gold_file_key(prefix, rel)))

    lake.map(copy, wanted)
    return root


# -- pruning old versions ---------------------------------------------------------------------------
INCOMPLETE_GRACE_S = 24 * 3600  # a version without its manifest this old is a build that died, not one running


def prune_gold_versions(lake: Lake, keep: int, dry_run: bool = False, now: float | None = None) -> dict:
    """Delete old gold versions: every complete version except the current one, the champion's and the ``keep``
    newest; a version whose build died (no manifest) once its files are a day old. Each version loses its
    manifest first (readers then see it as absent), then its other files. Images are never deleted: they live
    in processed/ (a version written with copies takes its copies with it). Returns what was (or would be)
    deleted and kept."""
    import time

    if keep < 0:
        raise ValueError(f"--keep {keep}: must be 0 or more")
    now = time.time() if now is None else now
    versions: dict[str, list] = {}
    for f in lake.list_files(lake_keys.GOLD_DATASETS):
        versions.setdefault(f.key[len(lake_keys.GOLD_DATASETS) + 1 :].split("/", 1)[0], []).append(f)
    protected = {}
    if lake.exists(lake_keys.GOLD_POINTER):
        protected[read_gold_pointer(lake)["dataset_hash"]] = "current"
    if lake.exists(lake_keys.CHAMPION_RECORD):
        champion = lake.read_json(lake_keys.CHAMPION_RECORD).get("dataset_hash")
        if champion:
            protected.setdefault(champion, "champion")
    complete, incomplete = {}, []
    for name, files in versions.items():
        manifest = next((f for f in files if f.key == lake_keys.gold_manifest_key(lake_keys.gold_prefix(name))), None)
        if manifest is not None:
            complete[name] = manifest.mtime
        elif now - max(f.mtime for f in files) > INCOMPLETE_GRACE_S:
            incomplete.append(name)
    newest = sorted((n for n in complete if n not in protected), key=lambda n: complete[n], reverse=True)[:keep]
    kept = {**{n: "recent" for n in newest}, **{n: why for n, why in protected.items() if n in versions}}
    doomed = sorted(n for n in complete if n not in kept) + sorted(incomplete)
    freed = sum(f.size for n in doomed for f in versions[n])
    if not dry_run:
        for name in doomed:
            prefix = lake_keys.gold_prefix(name)
            lake.delete(lake_keys.gold_manifest_key(prefix))  # first: the version is absent from here on
            lake.delete(prefix)
    return {"deleted": doomed, "kept": kept, "bytes": freed, "dry_run": dry_run}


# -- gold → a labelling tool's folder (local) ------------------------------------------------------
def export_gold_labels(
    lake: Lake,
    out_dir: str | Path,
    fmt: str,
    dataset_hash: str | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    copy_images: bool = True,
    force: bool = False,
    progress=None,
) -> dict:
    """Write the current gold dataset (or version ``dataset_hash``) as COCO, YOLO or Label Studio files.

    The folder is built under a temporary name and renamed into place, so ``out_dir`` never holds a half
    export. ``force`` replaces an earlier export (a folder holding ``alumi_export.json``), nothing else.
    Images are read through the lake (local or Azure). Bad input raises ``LabelExportError`` naming the fix.
    Returns the summary also written to ``alumi_export.json`` (plus ``out``). ``progress`` (a ``lib.progress``
    reporter) counts the image and label files copied.
    """
    import json

    import yaml

    from alumi_pipelines.lib.files import atomic_dir
    from alumi_pipelines.lib.vision import gold
    from alumi_pipelines.lib.vision import label_export as lx

    fmt = lx.check_format(fmt)
    chosen = lx.check_splits(splits)
    out = Path(out_dir).expanduser().absolute()
    _check_export_target(out, force)
    prefix, dataset_hash = _export_source(lake, dataset_hash)

    data_yaml_bytes = lake.read_bytes(lake_keys.gold_data_yaml_key(prefix))
    data_yaml = yaml.safe_load(data_yaml_bytes) or {}
    classes = lx.class_names(data_yaml)
    manifest = read_version_manifest(lake, prefix)
    images = lx.export_images(manifest, chosen)
    labels_key = lake_keys.gold_labels_key(prefix)
    if not lake.exists(labels_key):
        raise lx.LabelExportError(
            f"gold dataset {dataset_hash} has no label table ({lake.uri(labels_key)}): rebuild it (materialise "
            "gold_dataset)"
        )
    label_table = read_version_labels(lake, prefix, manifest)
    labels = lx.export_labels(label_table, images, classes)
    # where each file's bytes are: a manifest version names the processed image; label files come from the table
    sources: dict[str, str | bytes] = {rel: lake_keys.gold_file_key(prefix, rel) for rel in manifest["file"]}
    sources.update({rel: lake_keys.gold_file_key(prefix, rel) for rel in manifest["label_file"]})
    if gold.is_manifest_version(manifest):
        sources.update(zip(manifest["file"].to_list(), manifest["image_key"].to_list()))
        texts = gold.label_texts(label_table, manifest["image_id"].to_list())
        sources.update({rel: texts[i].encode() for rel, i in zip(manifest["label_file"], manifest["image_id"])})

    record = {
        "tool": "alumi export-labels",
        "format": fmt,
        "dataset_hash": dataset_hash,
        "classes": classes,
        "splits": {s: int((images["split"] == s).sum()) for s in chosen},
        "images": images.height,
        "boxes": labels.height,
        "images_copied": images.height if copy_images else 0,
    }
    if progress is not None:
        progress.total = images.height * ((fmt == "yolo") + copy_images)
    with atomic_dir(out, replace=force) as tmp:
        if fmt == "coco":
            doc = lx.coco_document(images, labels, classes, dataset_hash)
            _write_text(tmp / lx.COCO_FILE, json.dumps(doc, indent=2))
        elif fmt == "labelstudio":
            _write_text(
                tmp / lx.LABEL_STUDIO_TASKS, json.dumps(lx.labelstudio_tasks(images, labels, classes), indent=2)
            )
            _write_text(tmp / lx.LABEL_STUDIO_CONFIG, lx.labelstudio_config(classes))
        else:
            if tuple(chosen) == SPLITS:
                (tmp / lx.DATA_YAML).write_bytes(data_yaml_bytes)
            else:
                doc = lx.yolo_data_yaml(data_yaml, chosen)
                _write_text(tmp / lx.DATA_YAML, yaml.safe_dump(doc, sort_keys=False))
            _copy_gold_files(lake, sources, images["label_file"].to_list(), tmp, progress)
        if copy_images:
            _copy_gold_files(lake, sources, images["file"].to_list(), tmp, progress)
        _write_text(tmp / lx.EXPORT_RECORD, json.dumps(record, indent=2))
    return {**record, "out": str(out)}


def _check_export_target(out: Path, force: bool) -> None:
    from alumi_pipelines.lib.vision.label_export import EXPORT_RECORD, LabelExportError

    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise LabelExportError(f"--out {out} exists and is not a folder: give a new or empty folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise LabelExportError(f"--out {out} is not empty: give a new or empty folder, or --force to replace it")
    if not (out / EXPORT_RECORD).is_file():
        raise LabelExportError(
            f"--out {out} is not empty and is not an earlier export (no {EXPORT_RECORD}): --force only replaces an "
            "export; give a new or empty folder"
        )


def _export_source(lake: Lake, dataset_hash: str | None) -> tuple[str, str]:
    """(gold prefix, dataset hash) of the dataset to export: ``dataset_hash``'s folder, else the current one."""
    from alumi_pipelines.lib.vision.label_export import LabelExportError, check_dataset_hash

    if dataset_hash is None:
        if not lake.exists(lake_keys.GOLD_POINTER):
            raise LabelExportError(
                f"no gold dataset yet ({lake.uri(lake_keys.GOLD_POINTER)} does not exist): materialise gold_dataset "
                "first (dagster asset materialize -m alumi_pipelines.definitions --select gold_dataset)"
            )
        pointer = read_gold_pointer(lake)
        return pointer["prefix"], pointer["dataset_hash"]
    dataset_hash = check_dataset_hash(dataset_hash)
    prefix = lake_keys.gold_prefix(dataset_hash)
    if not lake.exists(lake_keys.gold_manifest_key(prefix)):
        known = [
            h
            for h in lake.list_dirs(lake_keys.GOLD_DATASETS)
            if lake.exists(lake_keys.gold_manifest_key(lake_keys.gold_prefix(h)))
        ]
        listed = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "") if known else "none"
        raise LabelExportError(
            f"unknown dataset hash {dataset_hash}: no complete gold dataset of that hash in the lake (known: "
            f"{listed}); give one of those, or omit --dataset for the current one"
        )
    return prefix, dataset_hash


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _copy_gold_files(lake: Lake, sources: dict[str, str | bytes], rels: list[str], root: Path, progress=None) -> None:
    """Write files of a gold version (paths relative to it) under ``root``: ``sources`` gives each one's lake key
    (read through the lake's bounded pool) or its bytes."""

    def copy(rel: str) -> None:
        source = sources[rel]
        data = source if isinstance(source, bytes) else lake.read_bytes(source)
        target = root / check_key(rel)  # a manifest path that would leave the folder ('..', absolute) is refused
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if progress is not None:
            progress.advance(1, len(data))

    lake.map(copy, rels)
