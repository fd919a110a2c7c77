"""What every bench part shares: the frames, order statistics, the host's figures."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

from runtime.pipeline.preprocess import list_images

REPO = Path(__file__).resolve().parents[2]


def cookie_dir() -> Path | None:
    for root in (Path.cwd() / ".." / "shared" / "datasets" / "cookie", REPO.parent / "shared" / "datasets" / "cookie"):
        if (root / "test").is_dir():
            return root.resolve()
    return None


def load_frames(n: int, images: Path | None = None, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """n BGR frames (repeated when the folder has fewer) and where they came from."""
    from runtime.pipeline.preprocess import load_image

    if images is not None:
        files = list_images(images, recursive=True, required=True)
        source = str(images)
    elif (root := cookie_dir()) is not None:
        good = sorted((root / "test" / "good").glob("*.png"))
        bad = sorted(p for d in (root / "test").iterdir() if d.is_dir() and d.name != "good" for p in d.glob("*.png"))
        files = [f for pair in zip(good, bad) for f in pair] or good or bad  # alternate normal / anomalous
        source = str(root / "test")
    else:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(min(n, 16))] * (n // 16 + 1), "noise 480x640"
    files = files[: max(n, 1)]
    frames = [load_image(f) for f in files]
    return (frames * (n // len(frames) + 1))[:n], source


# ---- statistics -------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, KiB on Linux


def rss_mb() -> float:
    """Resident memory now (Linux /proc; the peak where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
