"""The pipeline CLI: `alumi demo-data`, `alumi import`, `alumi batches`, `alumi export-labels`,
`alumi prune-gold`, `alumi promote`, `alumi rollback`, `alumi classes`, `alumi plant-demo-data`, `alumi plant-days`.

Expected failures are one line on stderr, ``alumi <command>: <what went wrong>: <the fix>``, and an exit code:

    0  done
    1  nothing to do (no complete landing batch, no landed plant day)
    2  usage or bad input: an unknown option, a bad ALUMI_* value, a path that is not a dataset, a bad lake key
    3  not found: no such model version, no champion to roll back from
    4  a service refused or could not be reached: the Azure lake, the MLflow server
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import zipfile
from pathlib import Path, PurePosixPath

from alumi_pipelines.assets.raw import list_landing_batches, write_landing_file, write_quarantine
from alumi_pipelines.assets.training.champion import sync_champion_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.settings import Settings

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_SERVICE = 0, 1, 2, 3, 4


class CliError(Exception):
    """An expected failure of a command: its message names the cause and the fix."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _lake(settings: Settings):
    from alumi_pipelines.resources import lake_for

    return lake_for(settings.lake_uri, deferred=False, concurrency=settings.lake_concurrency)


def register_batches(batch_ids: list[str]) -> list[str]:
    """Add landing batches as partitions of the Dagster instance (DAGSTER_HOME); returns the new ones."""
    from alumi_pipelines.partitions import landing_batches

    if not dagster_home_set():
        return []
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(landing_batches.name))
    new = [b for b in batch_ids if b not in known]
    if new:
        instance.add_dynamic_partitions(landing_batches.name, new)
    return new


def command_progress(label: str, settings: Settings, total: int | None = None, unit: str = "files"):
    """Progress of a long command on stderr: a bar on a terminal, a plain line every ALUMI_PROGRESS_SECONDS else."""
    from alumi_pipelines.lib.progress import terminal_progress

    return terminal_progress(label, total, unit=unit, every_s=settings.progress_seconds)


def cmd_demo_data(args, settings: Settings) -> int:
    from alumi_pipelines.lib.vision.formats import IMAGE_SUFFIXES
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    lake = _lake(settings)
    progress = command_progress("demo-data", settings, args.images * args.days, "images")

    def write(batch: str, key: str, data: bytes) -> None:
        write_landing_file(lake, batch, key, data)
        if PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES:
            progress.advance(1, len(data))

    start = dt.date.fromisoformat(args.start) if args.start else dt.date.today() - dt.timedelta(days=args.days - 1)
    batches = []
    for d in range(args.days):
        day = start + dt.timedelta(days=d)
        batch = f"day-{day.isoformat()}" + (f"-{args.condition}" if args.condition != "nominal" else "")
        summary = write_landing_batch(
            lambda key, data, b=batch: write(b, key, data),
            batch,
            args.images,
            day=day,
            seed=args.seed,
            size=args.size,
            condition=args.condition,
        )
        batches.append(batch)
        if d == args.days - 1:
            progress.finish()
        print(
            f"{batch}: {summary['images']} images, {summary['boxes']} boxes "
            f"-> {lake.uri(lake_keys.landing_prefix(batch))}"
        )
    new = register_batches(batches)
    if new:
        print(f"registered {len(new)} new partition(s) of landing_batches")
    return 0


def _safe_member(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]) or "\x00" in name:
        return None
    return path.as_posix()


def import_dataset(lake, source: Path, fmt: str, batch: str, classes: list[str] | None, progress=None) -> dict:
    """Copy a dataset folder or .zip archive verbatim into landing/<batch>/, then write its marker; ``progress``
    (a :mod:`lib.progress` reporter) counts the files copied."""
    from alumi_pipelines.lib.vision.formats import BATCH_MARKER
    from alumi_pipelines.lib.vision.ingest import check_batch_id

    check_batch_id(batch)
    rejected: list[dict] = []
    copied = 0
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if progress is not None:
                progress.total = len(members)
            for info in members:
                safe = _safe_member(info.filename)
                if safe is None:
                    rejected.append(
                        {
                            "batch": batch,
                            "path": info.filename,
                            "stage": "archive",
                            "reason": "archive member name leaves the batch folder (absolute or '..')",
                        }
                    )
                    if progress is not None:
                        progress.advance()
                    continue
                data = archive.read(info)
                write_landing_file(lake, batch, safe, data)
                copied += 1
                if progress is not None:
                    progress.advance(1, len(data))
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file())
        if progress is not None:
            progress.total = len(paths)
        for path in paths:
            data = path.read_bytes()
            write_landing_file(lake, batch, path.relative_to(source).as_posix(), data)
            copied += 1
            if progress is not None:
                progress.advance(1, len(data))
    else:
        raise CliError(f"{source} is neither a folder nor a .zip archive: give a dataset folder or a .zip file")
    if rejected:
        write_quarantine(lake, batch, rejected, lambda p: b"")
    marker = {
        "batch_id": batch,
        "format": fmt,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "source": str(source),
        "classes": classes,
    }
    write_landing_file(lake, batch, BATCH_MARKER, json.dumps(marker, indent=2).encode())
    return {"batch": batch, "files": copied, "rejected": len(rejected)}


def dataset_files(source: Path) -> tuple[list[str], object]:
    """The relative paths of a dataset folder or .zip archive and a reader of their bytes."""
    if source.is_file() and zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        members = {_safe_member(i.filename): i for i in archive.infolist() if not i.is_dir()}
        members.pop(None, None)
        return sorted(members), lambda rel: archive.read(members[rel])
    if source.is_dir():
        files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        return files, lambda rel: (source / rel).read_bytes()
    raise CliError(f"{source} is neither a folder nor a .zip archive: give a dataset folder or a .zip file")


def dataset_class_names(source: Path, fmt: str, declared: list[str] | None) -> list[str]:
    """The classes a dataset names, read with its format's parser (annotations only, no image decoded)."""
    from alumi_pipelines.lib.vision.formats import parse_batch
    from alumi_pipelines.lib.vision.labels import dataset_classes

    files, read = dataset_files(source)
    result = parse_batch(fmt, files, read, declared)
    return dataset_classes(result.class_names, (box.class_name for image in result.images for box in image.boxes))


def read_class_map(lake) -> dict | None:
    return lake.read_json(lake_keys.CLASS_MAP) if lake.exists(lake_keys.CLASS_MAP) else None


def write_class_map(lake, classes: list[str], source: str) -> None:
    record = {"classes": list(classes), "source": source, "updated_at": dt.datetime.now(dt.UTC).isoformat()}
    lake.write_json(lake_keys.CLASS_MAP, record)


def check_import_classes(lake, settings: Settings, names: list[str], batch: str, extend: bool) -> str:
    """Check the dataset's classes against the class map in force, before anything is copied; write the lake's
    class map when this is the first import that names classes (or --extend-classes). Returns what was done."""
    from alumi_pipelines.lib.vision.labels import unknown_classes

    if not names:
        raise CliError(
            "the dataset names no classes (YOLO ids without classes.txt or data.yaml): give --classes a,b,c or a "
            "classes.txt (one name per line, in id order)"
        )
    if settings.class_source == "ALUMI_CLASSES":
        unknown = unknown_classes(settings.classes, names)
        if unknown:
            raise CliError(
                f"the dataset names {', '.join(unknown)}, which ALUMI_CLASSES ({', '.join(settings.classes)}) does "
                "not have: add them to ALUMI_CLASSES, or unset it to use the lake's class map"
            )
        return f"classes: {len(names)} of ALUMI_CLASSES"
    current = read_class_map(lake)
    if current is None:
        write_class_map(lake, names, f"alumi import {batch}")
        return f"the lake's class map is now {', '.join(names)} (from this dataset)"
    unknown = unknown_classes(current["classes"], names)
    if not unknown:
        return f"classes: all {len(names)} in the lake's class map"
    if not extend:
        raise CliError(
            f"the dataset names {', '.join(unknown)}, which the lake's class map ({', '.join(current['classes'])}) "
            "does not have: run again with --extend-classes to add them, rename them in the dataset to the lake's "
            "names (YOLO: --classes with the lake's names), or start a new lake (ALUMI_HOME)"
        )
    write_class_map(lake, [*current["classes"], *unknown], f"alumi import {batch} --extend-classes")
    return f"the lake's class map gained {', '.join(unknown)}"


def cmd_import(args, settings: Settings) -> int:
    from alumi_pipelines.settings import parse_classes

    source = Path(args.path).expanduser().resolve()
    try:
        classes = list(parse_classes(args.classes)) if args.classes else None
    except ValueError as exc:
        raise CliError(f"--classes: {str(exc).replace('ALUMI_CLASSES=', '')}") from None
    if classes is None and args.format == "yolo":
        for candidate in ("classes.txt", "obj.names"):
            if (source / candidate).is_file():
                classes = list(parse_classes(str(source / candidate)))
                break
    batch = args.batch or f"import-{source.stem.lower().replace(' ', '-')}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    lake = _lake(settings)
    names = dataset_class_names(source, args.format, classes)
    said = check_import_classes(lake, settings, names, batch, args.extend_classes)
    with command_progress(f"import {batch}", settings) as progress:
        result = import_dataset(lake, source, args.format, batch, classes, progress)
    print(
        f"{result['batch']}: copied {result['files']} files into landing "
        f"({result['rejected']} archive members rejected); {said}"
    )
    register_batches([batch])
    return 0


def cmd_classes(args, settings: Settings) -> int:
    from alumi_pipelines.lib.vision.labels import unknown_classes
    from alumi_pipelines.settings import parse_classes

    lake = _lake(settings)
    current = read_class_map(lake)
    if args.set or args.add:
        try:
            given = list(parse_classes(args.set or args.add))
        except ValueError as exc:
            raise CliError(str(exc).replace("ALUMI_CLASSES=", "--set/--add ")) from None
        old = list(current["classes"]) if current else []
        new = given if args.set else [*old, *unknown_classes(old, given)]
        if old and new[: len(old)] != old:
            raise CliError(
                f"--set {', '.join(new)} would change the ids of the lake's classes ({', '.join(old)}): keep them "
                "first and in order (append new ones with --add), or start a new lake (ALUMI_HOME)"
            )
        write_class_map(lake, new, "alumi classes")
        current = read_class_map(lake)
    if current is None:
        print(f"no class map in the lake yet; in force: {', '.join(settings.classes)} ({settings.class_source})")
        return EXIT_OK
    print("\n".join(f"{i}\t{name}" for i, name in enumerate(current["classes"])))
    print(f"({current['source']}, {current['updated_at']})", file=sys.stderr)
    if settings.class_source == "ALUMI_CLASSES" and list(settings.classes) != list(current["classes"]):
        print(f"note: ALUMI_CLASSES overrides it: {', '.join(settings.classes)}", file=sys.stderr)
    return EXIT_OK


def cmd_batches(args, settings: Settings) -> int:
    if args.tags and args.backfill:
        print("alumi batches: --tags and --backfill exclude each other", file=sys.stderr)
        return 2
    batches = [b for b in list_landing_batches(_lake(settings)) if b.complete]
    ids = [b.batch_id for b in batches]
    if args.backfill and not dagster_home_set():
        print("alumi batches --backfill: DAGSTER_HOME is not set (it names the daemon's instance)", file=sys.stderr)
        return 2
    register_batches(ids)
    if (args.tags or args.backfill) and not ids:
        print(
            "alumi batches: no complete landing batch; run `alumi demo-data` or `alumi import` first",
            file=sys.stderr,
        )
        return 1
    if args.tags:
        print(json.dumps({"dagster/asset_partition_range_start": ids[0], "dagster/asset_partition_range_end": ids[-1]}))
    elif args.backfill:
        backfill_id, per_run = submit_ingestion_backfill(ids)
        print(
            f"backfill {backfill_id}: {len(ids)} landing batch(es) into raw + processed, in runs of at most "
            f"{per_run} batch(es); the Dagster daemon launches them (dagster dev, or dagster-daemon run)"
        )
    else:
        for b in batches:
            print(f"{b.batch_id}\t{b.files} files")
    return 0


def dagster_home_set() -> bool:
    import os

    return bool(os.environ.get("DAGSTER_HOME"))


def submit_ingestion_backfill(batch_ids: list[str]) -> tuple[str, int]:
    """An asset backfill of ingestion_job's assets over ``batch_ids``, added to the instance of DAGSTER_HOME, as the
    UI's "Materialize → Launch backfill" adds one. The backfill daemon splits it by the assets' backfill policy (runs
    of ALUMI_BACKFILL_PARTITIONS_PER_RUN batches) and the run queue bounds how many run at once."""
    from dagster import DagsterInstance
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    from alumi_pipelines.definitions import defs
    from alumi_pipelines.jobs import ingestion_job
    from alumi_pipelines.partitions import ingestion_backfill

    asset_graph = defs.get_repository_def().asset_graph
    instance = DagsterInstance.get()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        partition_names=batch_ids,
        asset_selection=sorted(ingestion_job.selection.resolve(asset_graph)),
        backfill_timestamp=get_current_timestamp(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title="alumi batches --backfill",
        description=f"{len(batch_ids)} landing batches: {batch_ids[0]} … {batch_ids[-1]}",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id, ingestion_backfill.max_partitions_per_run


def cmd_export_labels(args, settings: Settings) -> int:
    from alumi_pipelines.assets.gold import export_gold_labels
    from alumi_pipelines.lib.vision.label_export import LabelExportError, check_image_mode

    try:
        copy_images = check_image_mode(args.images) == "copy"
        with command_progress(f"export-labels {args.format}", settings) as progress:
            result = export_gold_labels(
                _lake(settings),
                args.out,
                args.format,
                dataset_hash=args.dataset,
                splits=args.split,
                copy_images=copy_images,
                force=args.force,
                progress=progress,
            )
    except LabelExportError as exc:
        print(f"alumi export-labels: {exc}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{s} {n}" for s, n in result["splits"].items())
    print(
        f"{result['format']}: {result['images']} images ({splits}), {result['boxes']} boxes, "
        f"{len(result['classes'])} classes of gold dataset {result['dataset_hash']}, "
        f"{result['images_copied']} images copied -> {result['out']}"
    )
    return 0


def cmd_prune_gold(args, settings: Settings) -> int:
    from alumi_pipelines.assets.gold import prune_gold_versions

    try:
        result = prune_gold_versions(_lake(settings), args.keep, dry_run=args.dry_run)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"alumi prune-gold: {exc}", file=sys.stderr)
        return 2
    verb = "would delete" if args.dry_run else "deleted"
    kept = ", ".join(f"{h[:12]} ({why})" for h, why in sorted(result["kept"].items(), key=lambda kv: kv[1])) or "none"
    print(
        f"{verb} {len(result['deleted'])} gold version(s) ({result['bytes']} bytes): "
        f"{', '.join(h[:12] for h in result['deleted']) or 'none'}; kept {kept}"
    )
    return 0


def cmd_plant_demo_data(args, settings: Settings) -> int:
    from alumi_pipelines.assets.plant.sensor_raw import write_plant_demo

    today = dt.datetime.now(dt.UTC).date()
    start = dt.date.fromisoformat(args.start) if args.start else today - dt.timedelta(days=args.days + 1)
    keys = write_plant_demo(_lake(settings), start, args.days, args.parts, args.seed)
    print(f"plant data for {args.days} day(s) from {start}: {len(keys)} files in {lake_keys.PLANT_LANDING}/")
    return 0


def cmd_plant_days(args, settings: Settings) -> int:
    from alumi_pipelines.assets.plant.sensor_raw import plant_days_tags

    try:
        tags = plant_days_tags(_lake(settings))
    except ValueError as exc:
        print(f"alumi plant-days: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(tags))
    return 0


def cmd_promote(args, settings: Settings) -> int:
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry, promote

    result = promote(args.model, args.version)
    registry = MlflowRegistry.from_settings(settings)
    sync_champion_record(
        _lake(settings), registry.model_copy(update={"model_name": args.model}) if args.model else registry
    )
    print(json.dumps(result))
    return 0


def cmd_rollback(args, settings: Settings) -> int:
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry, rollback

    result = rollback(args.model)
    registry = MlflowRegistry.from_settings(settings)
    sync_champion_record(
        _lake(settings), registry.model_copy(update={"model_name": args.model}) if args.model else registry
    )
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alumi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"alumi {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write synthetic aluminium images into landing/ (one batch per day)")
    p.add_argument("--images", type=int, default=40, help="images per day")
    p.add_argument("--days", type=int, default=1, help="how many days, one batch each (default: 1)")
    p.add_argument("--start", help="first day (YYYY-MM-DD); default: so the last day is today")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same images")
    p.add_argument("--size", type=int, default=640, help="image side in pixels")
    p.add_argument(
        "--condition",
        choices=("nominal", "dark", "blurred"),
        default="nominal",
        help="lighting/focus of the camera (dark and blurred drift from nominal)",
    )
    p.set_defaults(fn=cmd_demo_data)

    p = sub.add_parser("import", help="copy an existing labelled dataset (folder or .zip) into landing/")
    p.add_argument("path", help="the dataset: a folder or a .zip archive")
    p.add_argument(
        "--format",
        required=True,
        choices=("yolo", "voc", "coco", "labelme", "alumi"),
        help="how its labels are written",
    )
    p.add_argument("--batch", help="batch id (default: import-<name>-<time>)")
    p.add_argument("--classes", help="the dataset's class names: 'a,b,c' or a classes.txt (YOLO ids index it)")
    p.add_argument(
        "--extend-classes",
        action="store_true",
        help="add the dataset's classes the lake's class map does not have yet (appended: existing ids stay)",
    )
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("classes", help="show or change the lake's class map (the class names and their ids)")
    p.add_argument("--set", metavar="A,B,C", help="set the class map (a new lake, or one whose labels it extends)")
    p.add_argument("--add", metavar="X,Y", help="append classes to the class map (existing ids stay)")
    p.set_defaults(fn=cmd_classes)

    p = sub.add_parser("batches", help="list complete landing batches and register them as partitions")
    p.add_argument("--tags", action="store_true", help="print `dagster job execute --tags` JSON covering all batches")
    p.add_argument(
        "--backfill",
        action="store_true",
        help="submit a backfill of raw + processed over all batches to the instance (DAGSTER_HOME); the daemon runs "
        "it as several runs of ALUMI_BACKFILL_PARTITIONS_PER_RUN batches",
    )
    p.set_defaults(fn=cmd_batches)

    p = sub.add_parser(
        "export-labels", help="write the gold labels for a labelling tool (COCO, YOLO or Label Studio) into a folder"
    )
    # --format, --split and --images are checked by the command (not argparse choices): bad input is one line, exit 2
    p.add_argument("--format", required=True, metavar="{coco,yolo,labelstudio}", help="the labelling tool's format")
    p.add_argument("--out", required=True, help="the folder to write (new or empty; see --force)")
    p.add_argument("--dataset", metavar="HASH", help="a gold dataset's content hash (default: the current one)")
    p.add_argument(
        "--split", nargs="+", action="extend", metavar="SPLIT", help="train | val | test (default: every split)"
    )
    p.add_argument("--images", default="copy", metavar="{copy,none}", help="copy the images too (default: copy)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(fn=cmd_export_labels)

    p = sub.add_parser(
        "prune-gold", help="delete old gold dataset versions (keeps the current one, the champion's and --keep newest)"
    )
    p.add_argument("--keep", type=int, default=3, help="newest complete versions kept besides current and champion")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(fn=cmd_prune_gold)

    p = sub.add_parser("plant-demo-data", help="write simulated casting/rolling historian exports into landing/plant/")
    p.add_argument("--days", type=int, default=6, help="production days (default: 6)")
    p.add_argument("--parts", type=int, default=90, help="parts (coils) per day")
    p.add_argument("--start", help="first day (YYYY-MM-DD); default: so the last day ended yesterday")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files")
    p.set_defaults(fn=cmd_plant_demo_data)

    p = sub.add_parser("plant-days", help="print `dagster job execute --tags` JSON covering every landed plant day")
    p.set_defaults(fn=cmd_plant_days)

    for name, fn, helptext in (
        ("promote", cmd_promote, "move the champion alias to a model version"),
        ("rollback", cmd_rollback, "move the champion alias back to the previous version"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", help="registered model name (default: ALUMI_MODEL_NAME)")
        if name == "promote":
            p.add_argument("version", help="model version number")
        p.set_defaults(fn=fn)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alumi-pipelines")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _exit_code(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) of an expected failure; None for a bug, which keeps its traceback."""
    from alumi_pipelines.resources.lake import LakeKeyError
    from alumi_pipelines.resources.mlflow_registry import RegistryError

    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, RegistryError):
        return EXIT_NOT_FOUND, f"{exc}: list the versions in the MLflow UI (Models) or check --model / ALUMI_MODEL_NAME"
    if isinstance(exc, LakeKeyError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND, str(exc)
    if type(exc).__name__ in ("AzureLakeError",):
        return EXIT_SERVICE, str(exc)
    if type(exc).__name__ == "MlflowException":
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return EXIT_SERVICE, f"MLflow: {text}: check ALUMI_MLFLOW_URI"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"alumi {args.command}: {exc}; fix or unset the variable (README: Configuration)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.fn(args, settings)
    except Exception as exc:
        known = _exit_code(exc)
        if known is None:
            raise
        code, message = known
        print(f"alumi {args.command}: {' '.join(message.split())}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
