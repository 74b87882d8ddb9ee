"""``alumi-edge`` command line: pull, verify, serve, sync, rollback, info.

An expected failure is one line on stderr, ``alumi-edge <command>: <cause>: <fix>``, and an exit code:

    0  done
    1  nothing to do: no release installed, no previous version to roll back to
    2  usage: an unknown or missing option, a bad ALUMI_EDGE_* setting, a public key file that does not exist
    3  release refused, current version unchanged: bad checksum or signature, failing self-test, an unsigned,
       expired or older channel pointer; or verify found installed files that differ from their manifest
    4  unreachable: the release source could not be read, or the server could not listen on its address
    5  sync stopped early: feedback, frames or prediction logs stay queued (it prints its JSON summary either way)
    6  the device folder (--home) cannot be used: not writable, a full disk, a damaged state file
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from alumi_edge import __version__

EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_QUEUED, EXIT_HOME = 0, 1, 2, 3, 4, 5, 6


class EdgeCliError(Exception):
    """An expected failure of a command: its exit code, its cause and the fix."""

    def __init__(self, code: int, cause: object, fix: str):
        super().__init__(f"{cause}: {fix}")
        self.code, self.cause, self.fix = code, str(cause), fix


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _home_error(exc: OSError, home: Path) -> EdgeCliError:
    return EdgeCliError(
        EXIT_HOME,
        f"device folder {home}: {exc.strerror or exc}",
        "give a writable --home (ALUMI_EDGE_HOME) with free space",
    )


def _settings(**overrides):
    from alumi_edge.settings import EdgeSettings

    return EdgeSettings(**{k: v for k, v in overrides.items() if v is not None})


def _read_pubkey(values: list[str] | str | None) -> bytes:
    """The pinned key set: every PEM block of every --pubkey (file or PEM text), joined."""
    if isinstance(values, str):
        values = [values]
    values = [v for v in values or [] if v]
    if not values:
        raise EdgeCliError(
            EXIT_USAGE,
            "no pinned public key",
            "give --pubkey with the release's Ed25519 public key PEM file (or set ALUMI_EDGE_PUBKEY)",
        )
    pems = []
    for value in values:
        if value.lstrip().startswith("-----BEGIN"):
            pems.append(value.encode("ascii"))
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise EdgeCliError(
                EXIT_USAGE, f"public key file {path} does not exist", "give the path of the release's .pub PEM file"
            )
        pems.append(path.read_bytes())
    return b"\n".join(pems)


def cmd_pull(args) -> int:
    from alumi_edge.device_home import HomeError
    from alumi_edge.manifest import ReleaseError
    from alumi_edge.pull import pull
    from alumi_edge.sources import SourceError

    settings = _settings(home=args.home)
    source = args.source or os.environ.get("ALUMI_EDGE_SOURCE")
    if not source:
        raise EdgeCliError(
            EXIT_USAGE,
            "no release source",
            "give --source (a folder, file:// or https:// URL) or set ALUMI_EDGE_SOURCE",
        )
    pubkey = _read_pubkey(args.pubkey or settings.pubkey)
    try:
        result = pull(
            source, settings.home, pubkey, channel=args.channel, keep=args.keep, force=args.force, log=_stderr
        )
    except ReleaseError as exc:
        raise EdgeCliError(
            EXIT_REFUSED,
            f"release refused, current version unchanged: {exc}",
            "check that --pubkey pins the key the release is signed with; else publish a fresh release "
            "(materialise edge_release) and pull again",
        ) from None
    except SourceError as exc:
        raise EdgeCliError(
            EXIT_UNREACHABLE,
            f"source unreachable, current version unchanged: {exc}",
            "check --source (ALUMI_EDGE_SOURCE), the network and the SAS token, then pull again",
        ) from None
    except HomeError as exc:
        raise EdgeCliError(EXIT_HOME, f"pull failed, current version unchanged: {exc}", "repair --home") from None
    except OSError as exc:
        raise _home_error(exc, settings.home) from None
    print(json.dumps(result.to_dict()))
    return EXIT_OK


def cmd_verify(args) -> int:
    from alumi_edge.device_home import HomeError
    from alumi_edge.manifest import ReleaseError
    from alumi_edge.verify import verify_installed

    settings = _settings(home=args.home)
    values = args.pubkey or ([settings.pubkey] if settings.pubkey else [])
    pubkey = _read_pubkey(values) if values else None
    try:
        result = verify_installed(settings.home, pubkey, args.version)
    except ReleaseError as exc:
        raise EdgeCliError(
            EXIT_REFUSED,
            f"verify failed: {exc}",
            "reinstall it: alumi-edge rollback, or pull after removing the version",
        ) from None
    except HomeError as exc:
        raise EdgeCliError(
            EXIT_NOTHING, f"nothing to verify: {exc}", "pull a release first, or name an installed --version"
        ) from None
    if not result.signature_checked:
        _stderr("no pinned key (--pubkey or ALUMI_EDGE_PUBKEY): file hashes checked, manifest signature not")
    print(json.dumps(result.to_dict()))
    return 0


def cmd_serve(args) -> int:
    import socket

    import uvicorn

    from alumi_edge.main import create_app

    settings = _settings(home=args.home, host=args.host, port=args.port, model_path=args.model)
    if args.model is not None and not args.model.is_file():
        raise EdgeCliError(EXIT_USAGE, f"--model {args.model} does not exist", "give an ONNX file, or drop --model")
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise EdgeCliError(EXIT_USAGE, exc, "fix the setting, then start serve again") from None
    # probed here before uvicorn binds: an address in use is one line and its own exit code, not a log record
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds; a listener still refuses
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise EdgeCliError(
                EXIT_UNREACHABLE,
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
                "stop what holds the port, or choose another with --port (ALUMI_EDGE_PORT) or --host",
            ) from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return EXIT_OK


@contextmanager
def _sync_lock(home: Path):
    """One sync per device home at a time (a second one waits): two would upload the same batches twice."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        fh = open(home / "sync.lock", "a+b")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise _home_error(exc, home) from None
    with fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cmd_sync(args) -> int:
    from alumi_edge.feedback import FeedbackQueue
    from alumi_edge.sync import DEFAULT_LINE, CaptureSyncResult, open_target, sync_feedback

    settings = _settings(home=args.home)
    target_uri = args.target or os.environ.get("ALUMI_EDGE_SYNC_TARGET")
    if not target_uri:
        raise EdgeCliError(
            EXIT_USAGE,
            "no sync target",
            "give --target (the lake: a folder, file:// or https:// URL) or set ALUMI_EDGE_SYNC_TARGET",
        )
    try:
        target = open_target(target_uri)
    except ValueError as exc:
        raise EdgeCliError(EXIT_USAGE, exc, "give a folder, a file:// URI or an https:// URL") from None
    retry = {"attempts": args.attempts, "backoff_s": args.backoff, "log": _stderr}
    capture = CaptureSyncResult()
    with _sync_lock(settings.home):
        queue = FeedbackQueue(settings.feedback_path, settings.device_id)
        try:
            result = sync_feedback(queue, target, batch_size=args.batch_size, **retry)
        finally:
            queue.close()
        capture_db = settings.capture_dir / "capture.sqlite3"
        if capture_db.is_file():  # after a failed feedback upload: only count what stays queued
            from alumi_edge.capture import CaptureStore
            from alumi_edge.sync import sync_capture

            # the server may be writing frames into the same store right now: leave its files alone
            store = CaptureStore(
                capture_db.parent,
                max_bytes=settings.capture_max_bytes,
                recent_frames=settings.capture_recent_frames,
                remove_orphans=False,
            )
            try:
                capture = sync_capture(
                    store,
                    target,
                    settings.device_id,
                    line_id=args.line or os.environ.get("ALUMI_EDGE_LINE_ID") or DEFAULT_LINE,
                    frames=result.ok and not args.no_frames,
                    predictions=result.ok and not args.no_predictions,
                    batch_size=args.frame_batch_size,
                    **retry,
                )
            finally:
                store.close()
    error = result.error or capture.error
    print(json.dumps({**result.to_dict(), **capture.to_dict(), "error": error}))
    for skipped in capture.skipped:
        _stderr(f"frame {skipped['id']} not uploaded: {skipped['reason']}")
    if error:
        raise EdgeCliError(
            EXIT_QUEUED,
            f"sync stopped, {result.pending} records, {capture.pending_frames} frames and {capture.pending_logs} "
            f"prediction logs stay queued: {error}",
            "check --target (ALUMI_EDGE_SYNC_TARGET) and the network; the next sync sends them",
        )
    return EXIT_OK


def cmd_rollback(args) -> int:
    from alumi_edge.device_home import DeviceHome, HomeError

    home = DeviceHome(_settings(home=args.home).home)
    try:
        with home.lock():
            from_version, to_version = home.rollback()
    except HomeError as exc:
        raise EdgeCliError(
            EXIT_NOTHING, f"nothing to roll back to: {exc}", "pull a newer release first (alumi-edge pull)"
        ) from None
    except OSError as exc:
        raise _home_error(exc, home.root) from None
    print(json.dumps({"status": "rolled-back", "from": from_version, "to": to_version}))
    _stderr(f"current is now {to_version}; POST /admin/reload (or restart) makes a running server use it")
    return 0


def cmd_info(args) -> int:
    from alumi_edge.device_home import DeviceHome

    home = DeviceHome(_settings(home=args.home).home)
    current = home.current_version()
    info = {
        "home": str(home.root),
        "current": current,
        "previous": home.previous_version(),
        "installed": home.installed_versions(),
        "alumi_edge": __version__,
    }
    if current:
        manifest = home.manifest(current)
        info.update(
            created_at=manifest.created_at,
            classes=list(manifest.classes),
            imgsz=list(manifest.imgsz),
            metrics=manifest.metrics,
            source=manifest.source,
        )
    info["channels"] = channels = {}
    for channel in home.channels():
        accepted = home.accepted_pointer(channel)
        channels[channel] = {
            "accepted": accepted.summary() if accepted else None,
            "last_check": home.last_check(channel),
        }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"current: {current or '(none)'}")
        print(f"previous: {info['previous'] or '(none)'}")
        print(f"installed: {', '.join(info['installed']) or '(none)'}")
        print(f"home: {home.root}")
        for channel, state in channels.items():
            accepted, check = state["accepted"], state["last_check"] or {}
            if accepted:
                expiry = "EXPIRED" if accepted["expired"] else "expires"
                print(
                    f"channel {channel}: {accepted['version']} (sequence {accepted['sequence']}, "
                    f"{expiry} {accepted['expires_at']})"
                )
            if check.get("status") == "refused":
                print(f"channel {channel}: last pull at {check['checked_at']} REFUSED: {check['detail']}")
    if not current:
        _stderr(
            f"alumi-edge info: no release installed in {home.root}: run alumi-edge pull --source ... --pubkey ... "
            "--home ... first"
        )
        return EXIT_NOTHING
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the option and the way to the help, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {_one_line(message)}: see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="alumi-edge",
        description="Pull, verify and serve signed defect-detection releases.\n\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alumi-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_home(p):
        p.add_argument("--home", type=Path, help="device folder (default ALUMI_EDGE_HOME or ~/.alumi-edge)")
        return p

    p = with_home(sub.add_parser("pull", help="install the newest release of a channel (verified, self-tested)"))
    p.add_argument("--source", help="releases root: folder, file:// URI or https:// URL (with SAS query)")
    p.add_argument("--channel", default="stable", help="channel pointer to follow (default: stable)")
    p.add_argument(
        "--pubkey",
        action="append",
        help="pinned Ed25519 public key(s): PEM file or PEM text; repeat it (or put several keys in one file) to "
        "trust a key set while the release key is rotated",
    )
    p.add_argument("--keep", type=int, default=3, help="installed versions to keep (at least current + previous)")
    p.add_argument("--force", action="store_true", help="install even a version this device rolled back from")
    p.set_defaults(func=cmd_pull)

    p = with_home(sub.add_parser("verify", help="re-hash the installed version against its signed manifest"))
    p.add_argument("--pubkey", action="append", help="pinned Ed25519 public key(s), as for pull")
    p.add_argument("--version", dest="version", help="an installed version (default: current)")
    p.set_defaults(func=cmd_verify)

    p = with_home(sub.add_parser("serve", help="run the HTTP server (verifies the installed version first)"))
    p.add_argument("--host", help="bind address (default ALUMI_EDGE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default ALUMI_EDGE_PORT or 8080)")
    p.add_argument("--model", type=Path, help="serve this ONNX file instead of the pulled release")
    p.set_defaults(func=cmd_serve)

    p = with_home(
        sub.add_parser(
            "sync",
            help="push queued feedback (corrections/incoming/), kept frames (landing/) and closed prediction logs "
            "(predictions/) to the lake",
        )
    )
    p.add_argument("--target", help="lake root: folder, file:// URI or https:// URL (with SAS query)")
    p.add_argument("--batch-size", type=int, default=500, help="feedback records per file")
    p.add_argument("--frame-batch-size", type=int, default=200, help="frames per landing batch")
    p.add_argument("--line", help="line id written with the frames (default ALUMI_EDGE_LINE_ID or 'edge')")
    p.add_argument("--no-frames", action="store_true", help="do not upload kept frames")
    p.add_argument("--no-predictions", action="store_true", help="do not upload prediction logs")
    p.add_argument("--attempts", type=int, default=4, help="tries per file before giving up for this run")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles each try)")
    p.set_defaults(func=cmd_sync)

    p = with_home(sub.add_parser("rollback", help="switch current back to the previous version"))
    p.set_defaults(func=cmd_rollback)

    p = with_home(sub.add_parser("info", help="print the current version"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


def _setting_error(exc) -> str:
    """The first invalid setting of a pydantic ValidationError, as ``ALUMI_EDGE_X='value': why``."""
    errors = exc.errors()
    if not errors:
        return _one_line(str(exc))
    first = errors[0]
    name = "ALUMI_EDGE_" + "_".join(str(p) for p in first.get("loc", ())).upper()
    value = first.get("input")
    shown = f"{name}={value!r}" if name != "ALUMI_EDGE_" and not isinstance(value, dict) else "ALUMI_EDGE_* settings"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{shown}: {_one_line(first.get('msg', ''))}{more}"


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # named with the command they were given to
        command = f"alumi-edge {args.command}"
        _stderr(f"{command}: unrecognized arguments: {' '.join(unknown)}: see {command} --help")
        return EXIT_USAGE
    try:
        return args.func(args)
    except EdgeCliError as exc:
        _stderr(f"alumi-edge {args.command}: {_one_line(exc.cause)}: {exc.fix}")
        return exc.code
    except ValidationError as exc:
        _stderr(f"alumi-edge {args.command}: {_setting_error(exc)}: fix or unset the variable")
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
