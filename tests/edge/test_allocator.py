"""glibc keeps large freed buffers: a request in the inference pool stops faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

# One request as the server runs it: decode and pre-process on an inference-pool thread, then idle.
SCRIPT = r"""
import resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import cv2, numpy as np
from alumi_edge.allocator import keep_large_buffers
from alumi_edge.imaging import decode_image
from alumi_edge.processing import preprocess

ok, body = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8))
body = body.tobytes()
pool = ThreadPoolExecutor(2)

def faults_per_request(n=8):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        pool.submit(lambda: preprocess(decode_image(body), (640, 640))).result()
        time.sleep(0.01)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / n

faults_per_request(3)
applied = keep_large_buffers() if sys.argv[1] == "keep" else None
faults_per_request(3)
print(applied, faults_per_request())
"""


def _run(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True)
    applied, faults = out.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_buffers_stop_page_faults_per_request():
    applied, faults = _run("keep")
    assert applied == "True"
    _, reference = _run("default")
    # a 1024x768 frame, its letterboxed copy and the float tensor are ~2000 pages: faulted in every time
    assert reference > 500
    assert faults < 50
