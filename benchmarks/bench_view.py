"""The operator's view: what it costs the daemon, and how late the page paints what the daemon published.

    python benchmarks/bench_view.py --bundle models/lite [--seconds 10] [--rounds 2] [--cameras 1]

One daemon (lite bundle, synthetic line, when_full: wait, so frames/s is the inspection's own rate) runs
throughout; each round measures its frames/s over `--seconds` in three settings, in turn:
  none      nobody subscribes to <prefix>.preview (no view): previews are never made
  preview   a bare SUB takes <prefix>.preview (what the daemon pays for streaming: the gate, JPEG encoding, sending)
  view      `agpt view` (its own process) with headless Chromium on the page, streaming
and prints each median with its ratio to `none`, and the daemon process's CPU per judged frame (the view
and Chromium run in other processes; on a shared host this moves far less than wall-clock frames/s). The page measures publish -> paint itself
(window.__agptLatency: the daemon's publish_time to the animation frame after drawing); its median and
p99 are printed for the previews (frame + overlay) and the results (verdict, counters). On a small host
the view and the browser share the daemon's cores: `view` then includes their CPU, `preview` does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import _view_helpers as vh
import numpy as np
import zmq


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def judged_rate(d, seconds: float, cpu: list | None = None) -> float:
    """Frames/s over the window; cpu gets this process's CPU ms per judged frame (the daemon's, less noisy than
    wall-clock frames/s on a shared host: the view and Chromium are other processes)."""
    n0, t0, c0 = d.judged, time.monotonic(), _cpu_s()
    time.sleep(seconds)
    n = d.judged - n0
    if cpu is not None and n:
        cpu.append((_cpu_s() - c0) * 1e3 / n)
    return n / (time.monotonic() - t0)


class PreviewSink:
    """A bare SUB on <prefix>.preview that reads (and drops) every JPEG, on its own thread."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"{vh.PREFIX}.preview".encode())
        self.sock.connect(endpoint)
        self.n = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            if self.sock.poll(100):
                self.sock.recv_multipart()
                self.n += 1

    def close(self):
        self.stop.set()
        self.t.join(5)
        self.sock.close()
        self.ctx.term()


def start_view(d, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "runtime.cli", "view", "--daemon", f"{d.publish_endpoint},{d.control_endpoint}",
           "--prefix", vh.PREFIX, "--listen", f"127.0.0.1:{port}", "--token", vh.TOKEN]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "lite")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window per setting and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--preview-fps", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    missing = vh.chromium_missing()
    if missing:
        print(f"bench_view: {missing}", file=sys.stderr)
        return 2
    from runtime.pipeline.inspector import Inspector

    bundle = args.bundle
    insp = Inspector.from_config(bundle)
    vh.lite_products(bundle, insp)
    cfg = vh.daemon_cfg(bundle, cameras=args.cameras, preview_fps=args.preview_fps)
    for cam in cfg.camera_list:
        cam.when_full = "wait"  # the daemon's own rate, not the camera's
    rates: dict[str, list[float]] = {"none": [], "preview": [], "view": []}
    cpu: dict[str, list[float]] = {"none": [], "preview": [], "view": []}
    lat = {"frame": [], "result": []}
    with vh.running_daemon(cfg, insp) as d, tempfile.TemporaryDirectory() as tmp:
        judged_rate(d, 3.0)  # warm-up
        port = free_port()
        view = start_view(d, port)
        try:
            assert vh.poll(lambda: _up(port), 30), "agpt view did not start"
            with vh.chromium(Path(tmp) / "profile") as drv:
                for r in range(args.rounds):
                    # none: the page is closed (about:blank), so the view unsubscribes from the previews
                    drv.get("about:blank")
                    assert vh.poll(lambda: not d.preview.active, 10)
                    rates["none"].append(judged_rate(d, args.seconds, cpu["none"]))
                    sink = PreviewSink(d.publish_endpoint)
                    assert vh.poll(lambda: d.preview.active, 10)
                    rates["preview"].append(judged_rate(d, args.seconds, cpu["preview"]))
                    sink.close()
                    drv.get(f"http://127.0.0.1:{port}/")
                    assert vh.poll(
                        lambda: drv.execute_script("return window.__agptCounts && window.__agptCounts.frames") >= 1, 30
                    )
                    rates["view"].append(judged_rate(d, args.seconds, cpu["view"]))
                    got = drv.execute_script("return window.__agptLatency")
                    lat["frame"] += got["frame"]
                    lat["result"] += got["result"]
                    print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)
                stats = d.preview.stats()
        finally:
            view.terminate()
            view.wait(15)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "frames_per_s": {k: round(v, 2) for k, v in med.items()},
        "ratio_to_none": {k: round(v / med["none"], 3) for k, v in med.items()},
        "daemon_cpu_ms_per_frame": {k: round(statistics.median(v), 3) for k, v in cpu.items() if v},
        "latency_ms": {k: {"n": len(v), "median": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)} for k, v in lat.items()},
        "preview": stats,
        # the daemon's own CPU for streaming, independent of the host's load: scale + JPEG per second of streaming
        "preview_ms_per_s": round((stats["sent"] * (stats["encode_ms_mean"] or 0)) / (2 * args.rounds * args.seconds), 2),
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "cameras": args.cameras,
            "preview_fps": args.preview_fps,
            "cpus": os.cpu_count(),
        },  # fmt: skip
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


def _up(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
