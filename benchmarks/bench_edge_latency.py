"""Edge latency on CPU, in one run on the same images: HTTP /v1/detect vs bare ONNX Runtime vs PyTorch predict,
INT8 vs FP32, and a load run of concurrent clients against the server on loopback.

Targets (issue 4): HTTP end-to-end p50 ≤ 1.15× the bare ONNX Runtime call with pre- and post-processing
(decode, letterbox, session.run, box decoding + NMS, in-process on a plain session) and ≥ 2× faster than
ultralytics PyTorch predict; INT8 ≥ 1.5× faster than FP32; 0 errors under 16 concurrent clients. Every path
runs FP32 and INT8 (one server per model; a CPU device serves the INT8 model by default, MODEL_ROLE=auto);
HTTP against session.run alone is printed too, and a load run against each server.

Capture (issue 14) is on in every server, as deployed, except one more INT8 server with ALUMI_EDGE_CAPTURE=false
and otherwise the same settings: its HTTP p50 is measured in the same interleaved run, and the ratio capture on /
off is printed (target ≤ 1.05: the request path only hands the frame to the capture writer's queue). The writer
works after the answer is sent, so a sequential run bills little of it to anyone; the load runs (capture on and
off, INT8) show what it costs when the server is kept busy.

The model is a YOLO checkpoint given with --weights (e.g. the champion's best.pt); without one, an untrained
yolo11n with 5 classes is built from its yaml (same network, so the same latency; it detects nothing at
conf 0.25, which makes post-processing cheaper than with a trained model). Everything runs offline and
only talks to 127.0.0.1.

    .venv/bin/python benchmarks/bench_edge_latency.py                         # 640 px, 60 s load run
    .venv/bin/python benchmarks/bench_edge_latency.py --seconds 10 --runs 50
    .venv/bin/python benchmarks/bench_edge_latency.py --weights best.pt --imgsz 320
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLASSES = ("scratch", "dent", "pit", "crack", "stain")


NO_CAPTURE = "INT8 no capture"


def capture_counts(server: EdgeServer, root: Path) -> dict:
    """What a running server's capture store holds (its database read-only) and the frames it dropped (/metrics)."""
    import re
    import sqlite3

    import httpx

    db = sqlite3.connect(f"file:{root / 'capture.sqlite3'}?mode=ro", uri=True)
    try:
        query = "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(kept), 0) FROM frames"
        frames, size, kept = db.execute(query).fetchone()
    finally:
        db.close()
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    dropped = re.search(r"^alumi_edge_capture_dropped_frames ([0-9.e+]+)$", metrics, re.MULTILINE)
    logged = sum(1 for log in (root / "predictions").glob("*.jsonl") for _ in log.open())
    return {
        "frames": frames,
        "bytes": size,
        "kept": kept,
        "dropped": int(float(dropped.group(1))) if dropped else -1,
        "logged": logged,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def interleaved(calls: dict, runs: int, warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call of each ``name: (fn, items)``, taking turns call by call so that a change of
    machine load during the run affects every path alike."""
    for fn, items in calls.values():
        for i in range(warmup):
            fn(items[i % len(items)])
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(runs):
        for name, (fn, items) in calls.items():
            start = time.perf_counter()
            fn(items[i % len(items)])
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def untrained_weights(path: Path, imgsz: int) -> Path:
    """A yolo11n (5 classes) built from its yaml and saved as a checkpoint: no download, no training."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolo11n.yaml", nc=len(CLASSES), verbose=False)
    model.names = dict(enumerate(CLASSES))
    model.args = {"imgsz": imgsz, "task": "detect"}
    torch.save({"model": model, "ema": None, "train_args": {"imgsz": imgsz, "task": "detect"}}, path)
    return path


def make_images(count: int, width: int, height: int, folder: Path) -> list[Path]:
    """Synthetic aluminium surfaces (lib.synth) as JPEG files."""
    from alumi_pipelines.lib.vision.synth import encode_image, render_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(encode_image(render_image(1000 + i, width, height).image, "jpg"))
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EdgeServer:
    """``alumi-edge serve`` on 127.0.0.1 in a child process (JWT HS256 on, as deployed)."""

    def __init__(self, model: Path, home: Path, workers: int, threads: int, capture: bool = True):
        self.port = free_port()
        self.capture = capture
        self.secret = "bench-" + "s" * 40
        env = {
            **os.environ,
            "ALUMI_EDGE_HOME": str(home),
            "ALUMI_EDGE_AUTH": "hs256",
            "ALUMI_EDGE_JWT_SECRET": self.secret,
            "ALUMI_EDGE_LOG_LEVEL": "warning",
            "ALUMI_EDGE_INFERENCE_WORKERS": str(workers),
            "ALUMI_EDGE_RUNTIME": "onnxruntime",
            "ALUMI_EDGE_DEVICE": "cpu",
            "ALUMI_EDGE_INTRA_OP_THREADS": str(threads),
            "ALUMI_EDGE_CAPTURE": "true" if capture else "false",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alumi_edge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--model",
                str(model),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        import jwt

        return jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, self.secret, algorithm="HS256")

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alumi-edge serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"alumi-edge serve not ready after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class HttpDetect:
    """One keep-alive HTTP/1.1 connection (standard library ``http.client``) posting raw JPEG bodies to
    /v1/detect; remembers the box count of each answer.

    The client is part of what an HTTP round trip costs, so it is the leanest common one: httpx added
    about 1 ms per call here (11.3 vs 10.2 ms on the same server), which would be billed to the server.
    """

    def __init__(self, server: EdgeServer, timeout: float = 60.0):
        import http.client

        self.headers = {"Authorization": f"Bearer {server.token()}", "Content-Type": "image/jpeg"}
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        self.boxes: list[int] = []

    def _post(self, body: bytes) -> tuple[int, bytes]:
        self.connection.request("POST", "/v1/detect", body=body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST; one fresh attempt when the kept-alive connection was dropped."""
        import http.client

        try:
            return self._post(body)
        except (http.client.HTTPException, ConnectionError):
            self.connection.close()  # the next request opens a new connection
            return self._post(body)

    def __call__(self, body: bytes) -> None:
        import json

        status, data = self.post(body)
        if status != 200:
            raise RuntimeError(f"/v1/detect answered {status}: {data[:200]!r}")
        self.boxes.append(len(json.loads(data)["boxes"]))

    def __enter__(self) -> HttpDetect:
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()


def load_run(server: EdgeServer, images: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads posting images back to back for ``seconds``; throughput, p50/p99 and errors."""
    import http.client

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client_loop(index: int) -> None:
        with HttpDetect(server) as client:
            start_gate.wait()
            i = index
            while time.monotonic() < deadline[0]:
                started = time.perf_counter()
                try:
                    status, _ = client.post(images[i % len(images)])
                    if status != 200:
                        errors[index].append(f"HTTP {status}")
                    else:
                        latencies[index].append((time.perf_counter() - started) * 1000.0)
                except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, bad answer
                    errors[index].append(type(exc).__name__)
                i += clients

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    began = time.monotonic()
    start_gate.wait()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    elapsed = time.monotonic() - began
    done = [v for per in latencies for v in per]
    failed = [e for per in errors for e in per]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(done),
        "errors": len(failed),
        "error_kinds": sorted(set(failed)),
        "throughput": len(done) / elapsed if elapsed else 0.0,
        "p50": percentile(done, 50) if done else float("nan"),
        "p99": percentile(done, 99) if done else float("nan"),
    }


def bare_session(path: Path, threads: int):
    """A plain ONNX Runtime session (library defaults), not the edge runtime.

    One option is added: pool threads stop spinning when a run returns. It does not change a run; without
    it the threads burn a core for ~35 ms after each call, which would bill the next path measured in turn.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda tensor: session.run(None, {name: tensor})[0]


def bare_detect(run, info, conf: float):
    """decode → letterbox → ``run`` → decode + NMS, in-process: the bare call with pre- and post-processing."""
    import cv2
    import numpy as np

    from alumi_edge.processing import postprocess, preprocess

    def detect(body: bytes):
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        tensor, params = preprocess(image, info.input_hw, info.input_format)
        return postprocess(
            run(tensor),
            params,
            conf_threshold=conf,
            iou_threshold=0.7,
            max_det=300,
            num_classes=info.num_classes,
            end_to_end=info.end_to_end,
        )

    return detect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="YOLO checkpoint (.pt); default: an untrained yolo11n")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--images", type=int, default=20, help="synthetic test images")
    parser.add_argument("--image-size", default="1024x768", help="WIDTHxHEIGHT of the synthetic images")
    parser.add_argument("--runs", type=int, default=100, help="timed calls per sequential measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--workers", type=int, default=2, help="server inference threads")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads and torch threads (0: each library's default)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="alumi-bench-edge-") as tmp_name:
        tmp = Path(tmp_name)
        from alumi_pipelines.lib.export.int8 import quantize_int8
        from alumi_pipelines.lib.export.onnx_export import export_onnx
        from alumi_pipelines.lib.training.offline import import_ultralytics

        config_dir = tmp / "ultralytics"
        import_ultralytics(config_dir)
        import cv2
        from ultralytics import YOLO

        from alumi_edge.model_info import read_model_info

        width, height = (int(v) for v in args.image_size.lower().split("x"))
        paths = make_images(args.images, width, height, tmp / "images")
        weights = args.weights or untrained_weights(tmp / "untrained.pt", args.imgsz)
        exported = export_onnx(
            weights,
            tmp / "export",
            config_dir=config_dir,
            imgsz=args.imgsz,
            metadata={"model_version": "bench", "dataset_hash": "bench", "mlflow_run_id": "bench"},
        )
        quantized = quantize_int8(exported.path, tmp / "export" / "model_int8.onnx", paths)
        models = {"FP32": exported.path, "INT8": quantized.path}
        infos = {name: read_model_info(path) for name, path in models.items()}
        frames = [cv2.imread(str(p)) for p in paths]
        bodies = [p.read_bytes() for p in paths]
        from alumi_edge.processing import preprocess

        tensors = {
            name: [preprocess(f, info.input_hw, info.input_format)[0] for f in frames] for name, info in infos.items()
        }
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        runs = {name: bare_session(path, args.threads) for name, path in models.items()}
        torch_model = YOLO(str(weights))
        servers = {
            name: EdgeServer(path, tmp / f"edge_home_{name}", args.workers, args.threads)
            for name, path in models.items()
        }
        servers[NO_CAPTURE] = EdgeServer(
            models["INT8"], tmp / "edge_home_INT8_no_capture", args.workers, args.threads, capture=False
        )
        try:
            for server in servers.values():
                server.wait_ready()
            with (
                HttpDetect(servers["FP32"]) as http32,
                HttpDetect(servers["INT8"]) as http8,
                HttpDetect(servers[NO_CAPTURE]) as http8_off,
            ):
                calls = {
                    "ORT session.run FP32": (runs["FP32"], tensors["FP32"]),
                    "ORT session.run INT8": (runs["INT8"], tensors["INT8"]),
                    "ORT decode+pre+run+post FP32": (bare_detect(runs["FP32"], infos["FP32"], args.conf), bodies),
                    "ORT decode+pre+run+post INT8": (bare_detect(runs["INT8"], infos["INT8"], args.conf), bodies),
                    "HTTP POST /v1/detect FP32": (http32, bodies),
                    "HTTP POST /v1/detect INT8": (http8, bodies),
                    "HTTP POST /v1/detect INT8 no capture": (http8_off, bodies),
                    "ultralytics PyTorch predict": (
                        lambda f: torch_model.predict(
                            f, imgsz=args.imgsz, conf=args.conf, device="cpu", verbose=False, save=False
                        ),
                        frames,
                    ),
                }
                rows = list(interleaved(calls, args.runs).items())
                detections = round(statistics.mean(http32.boxes)) if http32.boxes else 0
            loads = {
                name: load_run(servers[name], bodies, args.clients, args.seconds)
                for name in ("INT8", NO_CAPTURE, "FP32")
            }
            captured = capture_counts(servers["INT8"], tmp / "edge_home_INT8" / "capture")
        finally:
            for server in servers.values():
                server.stop()

    p50 = {name: percentile(t, 50) for name, t in rows}
    base = p50["ORT session.run FP32"]
    load_avg = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\nedge latency, CPU ({os.cpu_count()} cores, load average {load_avg} at the end), "
        f"threads {args.threads or 'default'}, imgsz {args.imgsz}, {args.images} images {args.image_size}, "
        f"{args.runs} interleaved runs each, weights: {args.weights or 'untrained yolo11n'}, "
        f"{detections} detections/image "
        f"at conf {args.conf}, DFL rewritten: {exported.dfl_rewritten}, INT8 input {quantized.input_format}, "
        f"{quantized.shared_concat_scales} Concats on one scale, {len(quantized.float_nodes)} nodes kept in float; "
        f"capture on (the default) in every server but 'INT8 no capture'\n"
    )
    print(f"| {'path':<36} | {'p50 ms':>8} | {'p99 ms':>8} | {'p50 / ORT FP32 run':>18} |")
    print(f"| {'-' * 36} | {'-' * 8}: | {'-' * 8}: | {'-' * 18}: |")
    for name, times in rows:
        p99 = percentile(times, 99)
        print(f"| {name:<36} | {p50[name]:8.2f} | {p99:8.2f} | {p50[name] / base:17.2f}× |")
    torch_p50 = p50["ultralytics PyTorch predict"]
    ratios = [
        (
            "HTTP / ORT decode+pre+run+post FP32",
            p50["HTTP POST /v1/detect FP32"] / p50["ORT decode+pre+run+post FP32"],
            "≤ 1.15",
        ),
        (
            "HTTP / ORT decode+pre+run+post INT8",
            p50["HTTP POST /v1/detect INT8"] / p50["ORT decode+pre+run+post INT8"],
            "≤ 1.15",
        ),
        ("HTTP / ORT session.run FP32", p50["HTTP POST /v1/detect FP32"] / base, "–"),
        ("HTTP / ORT session.run INT8", p50["HTTP POST /v1/detect INT8"] / p50["ORT session.run INT8"], "–"),
        ("PyTorch predict / HTTP FP32", torch_p50 / p50["HTTP POST /v1/detect FP32"], "≥ 2"),
        ("PyTorch predict / HTTP INT8 (CPU default)", torch_p50 / p50["HTTP POST /v1/detect INT8"], "≥ 2"),
        ("FP32 / INT8 session.run", base / p50["ORT session.run INT8"], "≥ 1.5"),
        (
            "FP32 / INT8 decode+pre+run+post",
            p50["ORT decode+pre+run+post FP32"] / p50["ORT decode+pre+run+post INT8"],
            "–",
        ),
        ("FP32 / INT8 HTTP", p50["HTTP POST /v1/detect FP32"] / p50["HTTP POST /v1/detect INT8"], "–"),
        (
            "INT8 / FP32 throughput under load",
            loads["INT8"]["throughput"] / max(loads["FP32"]["throughput"], 1e-9),
            "–",
        ),
        (
            "HTTP INT8 capture on / off",
            p50["HTTP POST /v1/detect INT8"] / p50["HTTP POST /v1/detect INT8 no capture"],
            "≤ 1.05",
        ),
        (
            "INT8 load throughput, capture on / off",
            loads["INT8"]["throughput"] / max(loads[NO_CAPTURE]["throughput"], 1e-9),
            "–",
        ),
    ]
    print(f"\n| {'ratio (p50)':<42} | {'value':>6} | {'target':>6} |")
    print(f"| {'-' * 42} | {'-' * 6}: | {'-' * 6}: |")
    for label, value, target in ratios:
        print(f"| {label:<42} | {value:6.2f} | {target:>6} |")
    print(
        f"\nload runs: {args.clients} concurrent clients for {args.seconds:g} s each on 127.0.0.1, "
        f"{args.workers} inference threads (the INT8 model is what a CPU device serves by default)"
    )
    print("| model | requests | throughput req/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, load in loads.items():
        print(
            f"| {name} | {load['requests']} | {load['throughput']:.1f} | {load['p50']:.1f} | {load['p99']:.1f} | "
            f"{load['errors']}{' (' + ', '.join(load['error_kinds']) + ')' if load['errors'] else ''} |"
        )
    print(
        f"\ncapture, INT8 server at the end: {captured['logged']} prediction-log lines, {captured['frames']} frames "
        f"stored ({captured['bytes'] / 1e6:.1f} MB, the recent window), {captured['kept']} kept, "
        f"{captured['dropped']} dropped (writer queue full)"
    )
    return 0 if all(load["errors"] == 0 for load in loads.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
