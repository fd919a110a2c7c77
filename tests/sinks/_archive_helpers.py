"""Shared by tests/sinks/test_archive_*.py: results as the daemon hands them, polling with a deadline, a small disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.line.messages import ResultHeader
from runtime.sinks.base import SinkResult

MASK_PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # the sink stores the bytes as they come


def make_result(frame_id: int, verdict: bool | None = False, t: float | None = None, *, camera: str = "cam0",
                product: str = "widget", lot: str | None = None, part_id: str | None = None,
                image: np.ndarray | None = None, shape=(48, 64)) -> SinkResult:  # fmt: skip
    t = time.time() if t is None else t
    h = ResultHeader(
        frame_id=frame_id, camera=camera, line="line1", station="station3", prefix="line1.station3", product=product,
        bank_id="bank-" + product, capture_time=t, publish_time=t + 0.01, verdict=verdict,
        p_anomaly=None if verdict is None else (0.9 if verdict else 0.1), score=0.7 if verdict else 0.2,
        judge="llm-first_token", locations=["top left"] if verdict else [], latency_ms={"total": 12.5},
        part_id=part_id, lot=lot,
    )  # fmt: skip
    if image is None:
        image = np.full((*shape, 3), frame_id % 255, np.uint8)
    return SinkResult(h, MASK_PNG, image, None)


def wait_until(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling with a deadline


@contextlib.contextmanager
def small_disk(size_mb: int = 2):
    """A size-limited file system: tmpfs if mounting is permitted, else a loop-mounted ext4 image, else skip."""
    root = Path(tempfile.mkdtemp(prefix="agpt-disk-"))
    mounted = False
    image = None
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(root)], capture_output=True, text=True)
        if r.returncode == 0:
            mounted = True
        elif shutil.which("mkfs.ext4"):
            image = Path(tempfile.mkdtemp(prefix="agpt-img-")) / "disk.img"
            with open(image, "wb") as f:
                f.truncate(max(size_mb, 2) << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
            r2 = subprocess.run(["mount", "-o", "loop", str(image), str(root)], capture_output=True, text=True)
            mounted = r2.returncode == 0
            if not mounted:
                pytest.skip(
                    f"no small file system: tmpfs mount refused ({r.stderr.strip()}), loop mount refused ({r2.stderr.strip()})"
                )
        else:
            pytest.skip(f"no small file system: tmpfs mount refused ({r.stderr.strip()}) and no mkfs.ext4")
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(root)
        if image is not None:
            shutil.rmtree(image.parent, ignore_errors=True)


def noise(shape=(240, 320), seed: int = 0) -> np.ndarray:
    """An incompressible frame (its JPEG is tens of kB): fills a small disk quickly."""
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
