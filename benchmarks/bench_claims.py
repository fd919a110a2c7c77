"""The timing claims the tests used to assert, as printed figures (a test never times anything: on a shared
2-core host a loaded minute makes any such bound flaky, and a figure without its load says little).

    python benchmarks/bench_claims.py [--bundle models/tiny --ckpt models/tiny_ckpt] [--json]

Without --bundle/--ckpt it makes tiny seeded checkpoints and an F32 bundle in a temporary folder (~20 s).
It prints, with the load average:
- health: how long `agpt health` takes against a control socket that never answers, vs its timeout
  (was tests/deploy: `elapsed < 3`);
- bench, reference: the per-call product work (the shots' and the query's second encoding, as released)
  vs one encoding (was tests/tools/test_bench: per_call median > encoder median);
- bench, cameras: the ceiling (cores / cheapest CPU ms per frame) vs the best measured frames/s
  (was tests/tools/test_bench: ceiling >= 0.95 x the best run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import zmq

from runtime.cli import main as agpt
from runtime.tools import health


def health_timeout(timeout: float = 0.3, n: int = 5) -> dict:
    """A ROUTER that reads requests and never answers: check() must return after about `timeout`."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def swallow():
        while not stop.is_set():
            if sock.poll(20):
                sock.recv_multipart()

    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    took = []
    try:
        for _ in range(n):
            t0 = time.monotonic()
            ok, _ = health.check(f"tcp://127.0.0.1:{port}", timeout=timeout)
            took.append(time.monotonic() - t0)
            assert not ok
    finally:
        stop.set()
        t.join(2)
        sock.close()
        ctx.term()
    return {"timeout_s": timeout, "median_s": float(np.median(took)), "max_s": float(max(took))}


def _bench(*argv: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = agpt(["bench", *argv, "--json", "--threads", "1", "--llm-threads", "1", "--blas-threads", "1"])
    assert rc == 0, rc
    return json.loads(out.getvalue())


def bench_claims(bundle: Path, ckpt: Path, images: Path) -> dict:
    shots = sorted(images.glob("*.png"))[:2]
    ref = _bench("--bundle", str(bundle), "--frames", "6", "--warmup", "1", "--cameras", "", "--images", str(images),
                 "--modes", "first_token", "--new-tokens", "2", "--reference", str(ckpt), "--shots", *map(str, shots))  # fmt: skip
    st = ref["reference"]["stages"]
    cams = _bench("--bundle", str(bundle), "--frames", "20", "--warmup", "2", "--cameras", "1,2", "--images", str(images),
                  "--modes", "first_token")  # fmt: skip
    best = max(c["fps_total"] for c in cams["cameras"])
    return {
        "reference_per_call_ms": st["per_call"]["median_ms"],
        "reference_encoder_ms": st["encoder"]["median_ms"],
        "per_call_over_encoder": st["per_call"]["median_ms"] / st["encoder"]["median_ms"],
        "camera_ceiling_fps": cams["camera_ceiling"]["fps"],
        "best_fps": best,
        "ceiling_over_best": cams["camera_ceiling"]["fps"] / best,
    }


def _tiny(tmp: Path) -> tuple[Path, Path, Path]:
    from export.bundle_writer import export_bundle
    from export.tiny import make_tiny

    ckpt = make_tiny(tmp / "ckpt", seed=0, progress=lambda *_: None)
    desc = "This is a photo of a cookie for anomaly detection, which should be round, without any crack or damage."
    bundle = export_bundle(ckpt, tmp / "tiny", products={"cookie": desc}, quant="F32", progress=lambda *_: None)
    return bundle, ckpt, _tiny_images(tmp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--images", type=Path, help="a folder of frames (default: seeded random pictures)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = {"load_avg_before": list(os.getloadavg()), "cpus": os.cpu_count()}
    report["health"] = health_timeout()
    with tempfile.TemporaryDirectory() as td:
        if args.bundle and args.ckpt:
            bundle, ckpt, images = args.bundle, args.ckpt, args.images
            if images is None:
                images = _tiny_images(Path(td))
        else:
            bundle, ckpt, tiny_images = _tiny(Path(td))
            images = args.images or tiny_images
        report["bench"] = bench_claims(bundle, ckpt, images)
    report["load_avg_after"] = list(os.getloadavg())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        h, b = report["health"], report["bench"]
        print(f"load average {report['load_avg_before']} -> {report['load_avg_after']} on {report['cpus']} CPUs")
        print(f"health, silent daemon: {h['median_s']:.3f} s median, {h['max_s']:.3f} s max, timeout {h['timeout_s']} s")
        print(f"reference per-call product work {b['reference_per_call_ms']:.1f} ms vs one encoding "
              f"{b['reference_encoder_ms']:.1f} ms ({b['per_call_over_encoder']:.2f}x)")  # fmt: skip
        print(f"camera ceiling {b['camera_ceiling_fps']:.1f} frames/s vs best run {b['best_fps']:.1f} "
              f"({b['ceiling_over_best']:.2f}x)")  # fmt: skip
    return 0


def _tiny_images(tmp: Path) -> Path:
    import cv2

    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    return images


if __name__ == "__main__":
    sys.exit(main())
