"""Daemon figures: sustained frames/s, capture-to-publish latency (median, p99), changeover (swap) latency.

    python benchmarks/bench_daemon.py --bundle models/tiny --product cookie --swap-to cookie2   # the real inspector
    python benchmarks/bench_daemon.py --fake                                                    # plumbing only

Phase 1 (throughput): a source faster than inspection, `when_full: wait` -> frames judged per second.
Phase 2 (latency): the source paced at 80% of that rate, `drop_oldest` (a live camera) -> capture -> publish
(the header's latency_ms.total) and capture -> subscriber receipt. Swaps alternate between two products
during phase 2: load (off the loop), wait for the frame boundary, and the control round trip.
There is no reference daemon to compare with; the per-stage model latencies are in `agpt bench`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from runtime.config import CameraConfig, DaemonConfig  # noqa: E402
from runtime.control import request  # noqa: E402
from runtime.daemon import Daemon  # noqa: E402
from runtime.subscribe import ResultMessage, ResultSubscriber  # noqa: E402


class NoiseSource:
    """Camera-sized frames (a few precomputed noise images), optionally paced."""

    def __init__(self, shape=(480, 640), fps: float | None = None, n: int | None = None):
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(8)]
        self.period = 1.0 / fps if fps else 0.0
        self.n, self.i, self.eof = n, 0, False
        self.next = time.monotonic()

    def open(self):
        pass

    def read(self):
        if self.n is not None and self.i >= self.n:
            self.eof = True
            return False, None, None
        if self.period:
            self.next += self.period
            time.sleep(max(0.0, self.next - time.monotonic()))
        self.i += 1
        return True, self.frames[self.i % len(self.frames)], None

    def close(self):
        pass


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder (real inspector)")
    ap.add_argument("--product", default="widget")
    ap.add_argument("--swap-to", default=None, help="second product for the swap figure (default: none with a bundle)")
    ap.add_argument("--fake", action="store_true", help="the tests' fake inspector (measures the plumbing only)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--swaps", type=int, default=10)
    ap.add_argument("--size", default="480x640", help="camera frame HxW")
    ap.add_argument("--providers", default="CPUExecutionProvider")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.size.lower().split("x"))

    tmp = None
    if args.fake or args.bundle is None:
        import tempfile

        from _daemon_fakes import FakeInspector, make_bundle

        tmp = Path(tempfile.mkdtemp())
        bundle, inspector, product, other = make_bundle(tmp / "bundle"), FakeInspector(), "widget", "gadget"
        label = "fake inspector"
    else:
        from runtime.config import BackendConfig
        from runtime.inspector import Inspector

        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        inspector = Inspector.from_config(args.bundle, BackendConfig(providers=providers), "first_token")
        bundle, product, other = args.bundle, args.product, args.swap_to
        label = f"bundle {bundle}"

    def config(**cam) -> DaemonConfig:
        return DaemonConfig(
            bundle=bundle, product=product, camera=CameraConfig(kind="synthetic", source="bench", **cam),
            publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", sndhwm=10000, log_level="WARNING",
            resume_last_product=False,
        )  # fmt: skip

    # -- phase 1: throughput --
    d = Daemon(config(when_full="wait", queue_size=4), inspector, NoiseSource(shape, n=args.frames + 20))
    d.start()
    while d.judged < 20:  # warm-up
        time.sleep(0.01)
    t0, j0 = time.perf_counter(), d.judged
    d.wait()
    fps = (d.judged - j0) / (time.perf_counter() - t0)
    d.shutdown()

    # -- phase 2: latency at 80 % load, with swaps --
    rate = 0.8 * fps
    n2 = max(args.frames, 50)
    d = Daemon(config(when_full="drop_oldest", queue_size=2), inspector, NoiseSource(shape, fps=rate, n=n2))
    d.start()
    sub = ResultSubscriber(d.publish_endpoint, [d.cfg.topic_prefix + ".result"], rcvhwm=100000)
    time.sleep(0.3)
    total, receipt, swaps = [], [], []
    stop = threading.Event()

    def swapper():
        names = [other, product]
        for k in range(args.swaps if other else 0):
            if stop.wait(n2 / rate / (args.swaps + 1)):
                return
            t = time.perf_counter()
            r = request(d.control_endpoint, {"cmd": "swap_bank", "product": names[k % 2]}, 60)
            if r["ok"]:
                swaps.append((r["data"]["load_ms"], r["data"]["swap_wait_ms"], (time.perf_counter() - t) * 1e3))

    th = threading.Thread(target=swapper, daemon=True)
    th.start()
    while not d.wait(0):
        m = sub.recv(0.2)
        if isinstance(m, ResultMessage):
            receipt.append((time.time() - m.header.capture_time) * 1e3)
            total.append(m.header.latency_ms["total"])
    stop.set()
    th.join()
    drops = d._drops()
    d.shutdown()
    sub.close()

    print(f"daemon benchmark ({label}, frames {shape[0]}x{shape[1]}, {args.frames} frames)")
    print(f"  sustained throughput         {fps:8.1f} frames/s")
    print(f"  at {rate:6.1f} frames/s offered:  capture->publish median {statistics.median(total):7.2f} ms  p99 {pct(total, 99):7.2f} ms")
    print(f"                               capture->subscriber median {statistics.median(receipt):5.2f} ms  p99 {pct(receipt, 99):7.2f} ms")
    print(f"  drops during latency phase   queue {drops.queue}, publish {drops.publish}")
    if swaps:
        load, wait, rt = zip(*swaps)
        print(f"  swap ({len(swaps)}x): load+validate median {statistics.median(load):.2f} ms, frame-boundary wait median "
              f"{statistics.median(wait):.2f} ms, control round trip median {statistics.median(rt):.2f} ms (max {max(rt):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
