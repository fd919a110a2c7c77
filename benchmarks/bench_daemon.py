"""Daemon figures: sustained frames/s, capture-to-publish latency (median, p99), changeover (swap) latency.

    python benchmarks/bench_daemon.py --bundle models/tiny --product cookie --swap-to cookie2   # the real inspector
    python benchmarks/bench_daemon.py --fake                                                    # plumbing only

Phase 1 (throughput): a source faster than inspection, `when_full: wait` -> frames judged per second.
Phase 2 (latency): the source paced at 80% of that rate, `drop_oldest` (a live camera) -> capture -> publish
(the header's latency_ms.total) and capture -> subscriber receipt. Swaps alternate between two products
during phase 2: load (off the loop), wait for the frame boundary, and the control round trip.
There is no reference daemon to compare with; the per-stage model latencies are in `agpt bench`.

--cameras 1,2,4: camera scaling through the daemon instead (as `agpt run` runs it: the daemon opens the
bundle's Inspector itself, with max_batch = cameras). One camera: the `camera:` config;
N cameras: a `cameras:` list (capture threads preprocess, CameraSlots, one judge_batch per round). Every
camera is an endless noise source with `when_full: wait`, so the figure is the daemon's capacity. After
--warmup frames per camera, --frames frames per camera are timed from the results a subscriber receives:
frames/s in total and per camera (publish_time of the window's first and last result), each camera's count
in the window (none starved), capture-to-publish (latency_ms.total) median/p99 and its queue part.

    python benchmarks/bench_daemon.py --bundle models/tiny --product tiles --cameras 1,2,4 --threads 1 --llm-threads 1 --blas-threads 1
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

from runtime.line.config import BackendConfig, CameraConfig, DaemonConfig
from runtime.line.control import request
from runtime.line.daemon import Daemon
from runtime.tools.subscribe import ResultMessage, ResultSubscriber


class NoiseSource:
    """Camera-sized frames (a few precomputed noise images), optionally paced."""

    def __init__(self, shape=(480, 640), fps: float | None = None, n: int | None = None, seed: int = 0):
        rng = np.random.default_rng(seed)
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


def camera_run(args, shape, n_cams: int) -> dict:
    """One daemon with n_cams cameras, saturated; the figures of its timed window."""
    import json
    import resource
    from types import SimpleNamespace

    import zmq

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    backend = BackendConfig(providers=providers, intra_op_threads=args.threads, llm_threads=args.llm_threads,
                            blas_threads=args.blas_threads)  # fmt: skip
    cams = [CameraConfig(name=f"cam{k}", kind="synthetic", source="bench", when_full="wait") for k in range(n_cams)]
    form = {"camera": cams[0]} if n_cams == 1 else {"cameras": cams}
    cfg = DaemonConfig(
        bundle=args.bundle, product=args.product, publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", sndhwm=100000,
        log_level="WARNING", resume_last_product=False, backend=backend, start_paused=True, max_batch=args.max_batch, **form,
    )  # fmt: skip
    sources = [NoiseSource(shape, seed=k) for k in range(n_cams)]
    d = Daemon(cfg, sources=sources)  # the daemon opens the Inspector itself, as `agpt run` does
    d.start()
    warm, timed = args.warmup * n_cams, args.frames * n_cams
    window, got = [], 0
    # a bare SUB socket reading only the JSON headers: the subscriber's own work (PNG decoding, validation)
    # belongs to another process on a line, so it stays out of the daemon's CPU and GIL here
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000000)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(d.publish_endpoint)
    for t in ("result", "status"):
        sub.setsockopt(zmq.SUBSCRIBE, f"{cfg.topic_prefix}.{t}".encode())
    try:
        while not sub.poll(500):  # subscribed (the status re-send) before any frame is judged
            pass
        request(d.control_endpoint, {"cmd": "resume"}, 10)
        while len(window) < timed:
            if not sub.poll(60000):
                raise SystemExit(f"{n_cams} camera(s): no result for 60 s")
            frames = sub.recv_multipart()
            if not frames[0].endswith(b".result"):
                continue
            got += 1
            if got == warm + 1:
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            if got > warm:
                window.append(SimpleNamespace(**json.loads(frames[1])))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sub.close()
        d.shutdown()
    cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    seqs = [h.seq for h in window]
    lost = seqs[-1] - seqs[0] + 1 - len(seqs)
    wall = window[-1].publish_time - window[0].publish_time
    counts = {c.name: 0 for c in cams}
    for h in window:
        counts[h.camera] += 1
    total = [h.latency_ms["total"] for h in window]
    queue = [h.latency_ms["queue"] for h in window]
    return {
        "cameras": n_cams, "frames": len(window), "wall_s": wall, "fps_total": (len(window) - 1) / wall,
        "fps_per_camera": (len(window) - 1) / wall / n_cams, "per_camera_frames": list(counts.values()),
        "mean_batch": statistics.mean(h.batch for h in window),
        "capture_to_publish_ms": {"median": statistics.median(total), "p99": pct(total, 99)},
        "queue_ms": {"median": statistics.median(queue), "p99": pct(queue, 99)},
        "model_stages_median_ms": {k: statistics.median(h.latency_ms[k] for h in window if k in h.latency_ms)
                                   for k in ("preprocess", "encoder", "map", "prompt", "llm", "judge", "encode")
                                   if any(k in h.latency_ms for h in window)},
        "subscriber_lost": lost,
        "cpu_ms_per_frame": cpu_s * 1e3 / (len(window) - 1),
        "cores_busy": cpu_s / wall,
        "drops": d.drops().model_dump(),
    }  # fmt: skip


def camera_scaling(args, shape) -> int:
    import json
    import os
    import platform

    counts = sorted({int(c) for c in args.cameras.split(",") if c.strip()})
    runs = []
    for n in counts:
        print(f"{n} camera(s): {args.warmup} + {args.frames} frames each ...", file=sys.stderr, flush=True)
        runs.append(camera_run(args, shape, n))
    base = next((r["fps_total"] for r in runs if r["cameras"] == 1), None)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())  # fmt: skip
    print(
        f"daemon camera scaling (bundle {args.bundle}, product {args.product}, frames {shape[0]}x{shape[1]}, "
        f"threads onnxruntime {args.threads} / llama.cpp {args.llm_threads} / BLAS {args.blas_threads}, max_batch {args.max_batch}; {cpu}, {os.cpu_count()} cores)"
    )
    print(
        f"{'cameras':<8}{'frames/s':>10}{'per cam':>9}{'vs 1 cam':>10}{'batch':>7}   {'per-camera frames':<22}"
        f"{'capture->publish med/p99 ms':>28}{'queue med ms':>14}{'CPU ms/frame':>14}{'cores busy':>12}"
    )
    for r in runs:
        rel = f"{r['fps_total'] / base:9.2f}x" if base else f"{'-':>10}"
        c2p = r["capture_to_publish_ms"]
        print(
            f"{r['cameras']:<8}{r['fps_total']:>10.1f}{r['fps_per_camera']:>9.1f}{rel}{r['mean_batch']:>7.2f}   "
            f"{str(r['per_camera_frames']):<22}{c2p['median']:>16.1f} / {c2p['p99']:<9.1f}{r['queue_ms']['median']:>14.1f}"
            f"{r['cpu_ms_per_frame']:>14.1f}{r['cores_busy']:>12.2f}"
        )
    for r in runs:
        print(
            f"  {r['cameras']} cam model stages (median ms, per batch): "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["model_stages_median_ms"].items())
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "cpu": cpu,
                    "cores": os.cpu_count(),
                    "threads": {"onnxruntime": args.threads, "llama_cpp": args.llm_threads, "blas": args.blas_threads},
                    "max_batch": args.max_batch,
                },
                indent=2,
            )
        )
    return 0


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
    ap.add_argument("--cameras", default=None, help="camera counts for the scaling runs, e.g. 1,2,4 (needs --bundle)")
    ap.add_argument("--warmup", type=int, default=10, help="--cameras: untimed frames per camera first")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (backend.intra_op_threads)")
    ap.add_argument("--llm-threads", type=int, default=None, help="llama.cpp threads (backend.llm_threads)")
    ap.add_argument("--max-batch", type=int, default=None, help="--cameras: the config's max_batch (default: one per camera)")
    ap.add_argument("--blas-threads", type=int, default=None, help="numpy's OpenBLAS threads (backend.blas_threads)")
    ap.add_argument("--json", type=Path, default=None, help="--cameras: also write the figures to this JSON file")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.size.lower().split("x"))
    if args.cameras:
        if args.bundle is None:
            ap.error("--cameras needs --bundle")
        return camera_scaling(args, shape)

    tmp = None
    if args.fake or args.bundle is None:
        import tempfile

        from _daemon_fakes import FakeInspector, make_bundle

        tmp = Path(tempfile.mkdtemp())
        bundle, inspector, product, other = make_bundle(tmp / "bundle"), FakeInspector(), "widget", "gadget"
        backend = BackendConfig()
        label = "fake inspector"
    else:
        from runtime.pipeline.inspector import Inspector

        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        backend = BackendConfig(
            providers=providers, intra_op_threads=args.threads, llm_threads=args.llm_threads, blas_threads=args.blas_threads
        )
        inspector = Inspector.from_config(args.bundle, backend, "first_token")
        bundle, product, other = args.bundle, args.product, args.swap_to
        label = f"bundle {bundle}"

    def config(**cam) -> DaemonConfig:
        return DaemonConfig(
            bundle=bundle, product=product, camera=CameraConfig(kind="synthetic", source="bench", **cam),
            publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", sndhwm=10000, log_level="WARNING",
            resume_last_product=False, backend=backend,
        )  # fmt: skip

    # -- phase 1: throughput --
    d = Daemon(config(when_full="wait"), inspector, NoiseSource(shape, n=args.frames + 20))
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
    d = Daemon(config(when_full="drop_oldest"), inspector, NoiseSource(shape, fps=rate, n=n2))
    d.start()
    sub = ResultSubscriber(d.publish_endpoint, [d.cfg.topic_prefix + ".result"], rcvhwm=100000)
    time.sleep(0.3)  # the subscription reaches the daemon; results of frames captured until now waited in our queue
    reading_from = time.time()
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
        if isinstance(m, ResultMessage) and m.header.capture_time >= reading_from:
            receipt.append((time.time() - m.header.capture_time) * 1e3)
            total.append(m.header.latency_ms["total"])
    stop.set()
    th.join()
    drops = d.drops()
    d.shutdown()
    sub.close()

    print(f"daemon benchmark ({label}, frames {shape[0]}x{shape[1]}, {args.frames} frames)")
    print(f"  sustained throughput         {fps:8.1f} frames/s")
    print(
        f"  at {rate:6.1f} frames/s offered:  capture->publish median {statistics.median(total):7.2f} ms  p99 {pct(total, 99):7.2f} ms"
    )
    print(
        f"                               capture->subscriber median {statistics.median(receipt):5.2f} ms  p99 {pct(receipt, 99):7.2f} ms"
    )
    print(f"  drops during latency phase   queue {drops.queue}, publish {drops.publish}")
    if swaps:
        load, wait, rt = zip(*swaps)
        print(
            f"  swap ({len(swaps)}x): load+validate median {statistics.median(load):.2f} ms, frame-boundary wait median "
            f"{statistics.median(wait):.2f} ms, control round trip median {statistics.median(rt):.2f} ms (max {max(rt):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
