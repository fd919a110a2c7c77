"""`agpt bench --cameras`: several cameras through the daemon itself, saturated, and what it sustains."""

from __future__ import annotations

import time

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.store import ProductStore
from runtime.tools.bench_common import summary


class _FrameCycle:
    """A camera source that hands out the bench frames round robin, as fast as the daemon takes them."""

    def __init__(self, frames: list[np.ndarray], start: int):
        self.frames, self.i = frames, start

    def open(self) -> None:
        pass

    def read(self):
        self.i += 1
        return True, self.frames[self.i % len(self.frames)], None

    def close(self) -> None:
        pass


class BenchStore(ProductStore):
    """The bundle's product store with the bench's pack in it (a pack built in memory from --shots)."""

    def __init__(self, insp, pack):
        super().__init__(insp.bundle.root / "products", insp.pack_spec, insp.manifest_products)
        self.pack = pack

    def load(self, name: str):
        return self.pack if name == self.pack.name else super().load(name)


def run_cameras(insp, frames: list[np.ndarray], pack, n_cams: int, per_camera: int) -> dict:
    """n_cams cameras through the daemon itself (runtime.line.daemon.Daemon with this inspector): capture threads
    preprocess, the inspection loop judges batches, results go out on its publisher; a subscriber counts them."""
    import json

    import zmq

    from runtime.line.config import CameraConfig, DaemonConfig
    from runtime.line.daemon import Daemon
    from runtime.line.messages import ResumeRequest

    insp.verdict_mode = "first_token"
    cams = [CameraConfig(name=f"cam{k}", kind="synthetic", source="bench", when_full="wait") for k in range(n_cams)]
    form = {"camera": cams[0]} if n_cams == 1 else {"cameras": cams}
    cfg = DaemonConfig(bundle=insp.bundle.root, product=pack.name, publish="inproc://agpt-bench-cams", control="inproc://agpt-bench-ctl",
                       sndhwm=1000000, log_level="WARNING", resume_last_product=False, start_paused=True, **form)  # fmt: skip
    ctx = zmq.Context()
    d = Daemon(
        cfg, inspector=insp, sources=[_FrameCycle(frames, k) for k in range(n_cams)], ctx=ctx, store=BenchStore(insp, pack)
    )
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000000)
    sub.setsockopt(zmq.LINGER, 0)
    counts, latency, sizes = [0] * n_cams, [], []
    target = per_camera * n_cams
    try:
        d.start()
        sub.connect(d.publish_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, f"{cfg.topic_prefix}.result".encode())
        # warm-up: one batch of every size up to n_cams (ORT arenas, llama.cpp graphs), before the clock starts
        for b in range(1, n_cams + 1):
            insp.judge_batch([frames[k % len(frames)] for k in range(b)], [pack] * b)
        t0, cpu0 = time.perf_counter(), time.process_time()
        d.handle(ResumeRequest(cmd="resume"))
        while sum(counts) < target:
            if not sub.poll(10000):
                raise AgptError("no result for 10 s")
            h = json.loads(sub.recv_multipart()[1])
            cam = int(h["camera"][3:])
            counts[cam] += 1
            sizes.append(h["batch"])
            latency.append(h["latency_ms"]["total"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        sub.close()
        d.shutdown()
        ctx.term()
    total = sum(counts)
    return {
        "cameras": n_cams,
        "frames": total,
        "wall_s": wall,
        "fps_total": total / wall,
        "fps_per_camera": total / wall / n_cams,
        "per_camera_frames": counts,
        "mean_batch": float(np.mean(sizes)),
        "latency": summary(latency),  # capture -> handed to the publisher, from the daemon's own headers
        # all threads of this process: when cores_busy reaches the host's cores, more cameras cannot add frames/s
        "cpu_ms_per_frame": cpu / max(total, 1) * 1e3,
        "cores_busy": cpu / wall,
        "starved": min(counts) < 0.5 * max(counts),  # one frame per camera per batch: counts stay close
    }
