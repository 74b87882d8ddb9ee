"""Helpers of the edge tests: a tiny colour-detector ONNX, test images, a signed release store, JWTs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

EDGE_SRC = Path(__file__).resolve().parents[2] / "edge_export"
if str(EDGE_SRC) not in sys.path:
    sys.path.insert(0, str(EDGE_SRC))

COLOR_NAMES = ("red", "green", "blue")
CELL = 16


def make_color_onnx(
    path: Path, imgsz: int = 64, model_version: str = "1.0.0", names=COLOR_NAMES, input_format: str = "rgb_f32_nchw"
) -> Path:
    """A detector ONNX with the YOLO output layout that finds red, green and blue squares.

    Each 16×16 cell of the input is one candidate box; its class scores are the cell's mean of
    ``channel - (other channels) / 2`` in RGB, so a pure red cell scores 1.0 as "red" and grey scores 0.
    With ``input_format="bgr_u8_s2d2"`` it takes the packed uint8 pixels instead (as the INT8 export does)
    and unpacks them with DepthToSpace: same scores, same boxes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    grid = imgsz // CELL
    weights = np.full((3, 3, 1, 1), -0.5, dtype=np.float32)
    for c in range(3):
        weights[c, c, 0, 0] = 1.0
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * CELL
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    anchors = np.stack(
        [cx.ravel(), cy.ravel(), np.full(grid * grid, CELL, np.float32), np.full(grid * grid, CELL, np.float32)]
    )
    pixels = input_format == "bgr_u8_s2d2"
    unpack = (
        [
            helper.make_node("Transpose", ["images"], ["packed_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["packed_nchw"], ["packed_float"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["packed_float", "max_pixel"], ["packed_unit"]),
            helper.make_node("DepthToSpace", ["packed_unit"], ["bgr"], blocksize=2, mode="DCR"),
        ]
        if pixels
        else []
    )
    if pixels:
        weights = weights[:, ::-1].copy()  # the unpacked image is BGR
    nodes = unpack + [
        helper.make_node("Conv", ["bgr" if pixels else "images", "w"], ["scores_map"]),
        helper.make_node("AveragePool", ["scores_map"], ["pooled"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]),
        helper.make_node("Reshape", ["pooled", "shape"], ["scores"]),
        helper.make_node("Concat", ["anchors", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "color_detector",
        [
            helper.make_tensor_value_info("images", TensorProto.UINT8, [1, imgsz // 2, imgsz // 2, 12])
            if pixels
            else helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + len(names), grid * grid])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            *([numpy_helper.from_array(np.array(255, np.float32), "max_pixel")] if pixels else []),
            numpy_helper.from_array(np.array([1, len(names), grid * grid], dtype=np.int64), "shape"),
            numpy_helper.from_array(anchors[None].astype(np.float32), "anchors"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        "names": str(dict(enumerate(names))),
        "imgsz": str([imgsz, imgsz]),
        "stride": "16",
        "task": "detect",
        "model_version": model_version,
        "dataset_hash": "d" * 16,
        **({"input_format": input_format} if pixels else {}),
    }.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def color_image(width: int = 128, height: int = 96, squares=(("red", 32, 32, 32),)) -> np.ndarray:
    """A grey BGR image with coloured squares (name, x, y, side)."""
    bgr = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
    image = np.full((height, width, 3), 114, dtype=np.uint8)
    for name, x, y, side in squares:
        image[y : y + side, x : x + side] = bgr[name]
    return image


def release_sample() -> np.ndarray:
    """The sample image every test release carries (a red and a blue square)."""
    return color_image(128, 128, squares=(("red", 32, 32, 32), ("blue", 96, 64, 32)))


def release_int8_boxes(work: Path) -> list[dict]:
    """Expected boxes of the test releases' INT8 model (the same colour network) on the sample image."""
    return expected_for(make_color_onnx(work / "int8-reference.onnx"), release_sample())["boxes"]


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def expected_for(model_path: Path, image: np.ndarray, conf: float = 0.25, iou: float = 0.7) -> dict:
    """sample_expected document computed with the edge runtime itself."""
    from alumi_edge.runtimes import OnnxRuntime
    from alumi_edge.selftest import RAW_TOLERANCE, sample_raw_scores
    from alumi_pipelines.lib.export.release import expected_detections

    runtime = OnnxRuntime(model_path).load()
    result = runtime.detect(image, conf=conf, iou=iou)
    expected = expected_detections(
        [[b.x1, b.y1, b.x2, b.y2] for b in result.boxes],
        [b.confidence for b in result.boxes],
        [b.class_id for b in result.boxes],
        list(runtime.info.names),
        conf,
        iou,
    )
    return {**expected, "raw": {"top_scores": sample_raw_scores(runtime, image), "tolerance": RAW_TOLERANCE}}


class ReleaseStore:
    """A releases root on disk that tests publish signed releases to."""

    def __init__(self, root: Path, private_pem: bytes, work: Path):
        self.root = root
        self.private_pem = private_pem
        self.work = work

    def publish(
        self,
        version: str,
        channels=("stable",),
        expected: dict | None = None,
        model_path: Path | None = None,
        extra_bytes: int = 0,
        int8_boxes: list | None = None,
    ) -> Path:
        """Write and sign a release with a colour model, sample image and expected boxes; move the channels.

        ``int8_boxes`` adds a second model file (role ``model_int8``, the same network) with these expected
        boxes under the sample document's ``roles``.
        """
        from alumi_pipelines.lib.export.release import ReleaseInput, publish_release, write_release
        from alumi_pipelines.resources import lake_keys

        staging = self.work / f"staging-{version}"
        staging.mkdir(parents=True)
        model = model_path or make_color_onnx(staging / "model.onnx", model_version=version)
        sample = release_sample()
        (staging / "sample.png").write_bytes(encode(sample))
        expected = expected if expected is not None else expected_for(model, sample)
        files = [ReleaseInput(model, "model.onnx", "model")]
        if int8_boxes is not None:
            expected = {**expected, "roles": {"model_int8": {"boxes": int8_boxes}}}
            files.append(ReleaseInput(model, "model_int8.onnx", "model_int8"))
        (staging / "sample_expected.json").write_text(json.dumps(expected))
        files += [
            ReleaseInput(staging / "sample.png", "sample.png", "sample_image"),
            ReleaseInput(staging / "sample_expected.json", "sample_expected.json", "sample_expected"),
        ]
        if extra_bytes:
            (staging / "build_plan.bin").write_bytes(np.random.default_rng(0).bytes(extra_bytes))
            files.append(ReleaseInput(staging / "build_plan.bin", "build_plan.bin", "build_plan"))
        release_dir = self.work / "built" / version
        write_release(
            release_dir,
            files,
            version=version,
            classes=list(COLOR_NAMES),
            imgsz=64,
            private_key_pem=self.private_pem,
            metrics={"map50": 0.9},
            source={"mlflow_run_id": "run-" + version, "model_name": "alumi-detector", "model_version": "3"},
        )

        def write(key: str, data: bytes) -> None:
            target = self.root / key.removeprefix(lake_keys.RELEASES + "/")  # the store root is the releases zone
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(".tmp-" + target.name)
            tmp.write_bytes(data)
            tmp.replace(target)

        def read(key: str) -> bytes | None:
            target = self.root / key.removeprefix(lake_keys.RELEASES + "/")
            return target.read_bytes() if target.is_file() else None

        publish_release(
            release_dir,
            write,
            channels=channels,
            file_key=lake_keys.release_file_key,
            channel_key=lake_keys.channel_key,
            private_key_pem=self.private_pem,
            read_bytes=read,
        )
        return self.root / version


JWT_SECRET = "s" * 48


def make_token(secret: str = JWT_SECRET, expires_in: float = 300, algorithm: str = "HS256", **claims) -> str:
    import time

    import jwt

    payload = {"sub": "operator-7", "exp": int(time.time() + expires_in), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


def auth_header(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


def edge_settings(home: Path, **overrides):
    from alumi_edge.settings import EdgeSettings

    values = dict(
        home=home,
        auth="hs256",
        jwt_secret=JWT_SECRET,
        device_id="line1/cam 2",
        runtime="onnxruntime",
        device="cpu",
        max_body_bytes=200_000,
        inference_workers=2,
    )
    values.update(overrides)
    return EdgeSettings(**values)


# -- capture store (alumi_edge.capture) -------------------------------------------------------------

CAPTURE_HOURS = ("2024-05-01T10", "2024-05-01T11", "2024-05-01T12")  # past hours: their prediction logs are closed
CAPTURE_TIMING = {
    "decode": 0.5,
    "preprocess": 0.25,
    "inference": 2.0,
    "postprocess": 0.125,
    "total": 2.5,
    "request": 3.0,
}


def capture_frame(index: int, created_at: str):
    """A frame with its own PNG bytes. Every 5th has no box, every 4th (of the rest) a confident one (neither is
    kept by the default rules); the others an uncertain box (confidence 0.4: kept). Every 7th with a box has a
    second, less confident one."""
    import hashlib

    from alumi_edge.capture import Frame

    image = color_image(48, 32, squares=(("red", index % 16, 4, 16),))
    image[0, 0] = (index % 256, index // 256 % 256, 7)  # unique bytes, unique sha256
    data = encode(image)
    if index % 5 == 4:
        boxes = []
    else:
        confidence = 0.9 if index % 4 == 3 else 0.4
        x = float(index % 16)
        boxes = [
            {"class_id": 0, "class_name": "red", "confidence": confidence, "x1": x, "y1": 4.0, "x2": x + 16, "y2": 20.0}
        ]
        if index % 7 == 5:
            boxes.append(
                {"class_id": 2, "class_name": "blue", "confidence": 0.3, "x1": 30.0, "y1": 8.0, "x2": 46.0, "y2": 30.0}
            )
    prediction = {
        "boxes": boxes,
        "image": {"width": 48, "height": 32, "sha256": hashlib.sha256(data).hexdigest()},
        "timing_ms": dict(CAPTURE_TIMING),
    }
    frame_id = hashlib.md5(f"frame-{index}".encode()).hexdigest()  # 32 hex digits, like a detection id
    return Frame(frame_id, data, "1.0.0", prediction, created_at=created_at)


def capture_is_kept(index: int) -> bool:
    return index % 5 != 4 and index % 4 != 3


def filled_capture_store(root: Path, count: int, hours=CAPTURE_HOURS):
    """A CaptureStore at ``root`` (the writer, as the server holds it) with ``count`` frames spread over ``hours``."""
    from alumi_edge.capture import CaptureRules, CaptureStore

    store = CaptureStore(root, rules=CaptureRules(per_hour_cap=100_000), queue_size=count + 1, seed=0)
    for index in range(count):
        hour = hours[index * len(hours) // count]
        created_at = f"{hour}:{index // 60 % 60:02d}:{index % 60:02d}.{index % 1000:03d}Z"
        assert store.submit(capture_frame(index, created_at))
    store.flush()
    assert store.dropped == 0
    return store
