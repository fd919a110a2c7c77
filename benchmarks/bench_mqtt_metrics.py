"""The cost of the MQTT bridge and the metrics endpoint: frames/s with both on vs both off, and the latency
from a result to an MQTT subscriber.

    python benchmarks/bench_mqtt_metrics.py --bundle models/tiny --product tiles
    python benchmarks/bench_mqtt_metrics.py --bundle models/lite --product tiles

Throughput: the same daemon config (one engine thread each, as on a 2-core host), a source faster than
inspection (`when_full: wait`), run off / on, on / off, ... (--repeats pairs, order alternated so a shared
machine's load drifts into both sides alike); after --warmup frames, --frames frames are timed. "on" is
`mqtt:` to a Mosquitto started here on loopback (QoS --qos, --mask to add the PNG) plus `metrics:` scraped
every --scrape-s seconds, with an MQTT subscriber reading everything.
Latency: the source paced at 80% of the "off" rate (`drop_oldest`, a live camera); for each result the MQTT
subscriber's receipt minus the header's publish_time (result -> MQTT subscriber) and minus capture_time
(capture -> MQTT subscriber), median and p99; the ZeroMQ subscriber's capture -> receipt beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _mosquitto import Collector, Mosquitto
from bench_daemon import NoiseSource, pct

from runtime.line.config import BackendConfig, CameraConfig, DaemonConfig
from runtime.line.daemon import Daemon
from runtime.line.messages import ResultHeader
from runtime.sinks.metrics_config import MetricsConfig
from runtime.sinks.mqtt_config import MqttConfig
from runtime.tools.subscribe import ResultMessage, ResultSubscriber


def metrics_submit_us(n: int = 20000) -> float:
    """What the inspection loop pays per result for the metrics sink (submit_result is inline, no queue)."""
    from runtime.line.messages import ResultHeader
    from runtime.sinks.base import SinkResult
    from runtime.sinks.metrics import MetricsSink

    lat = {k: 1.0 for k in ("queue", "preprocess", "encoder", "map", "prompt", "llm", "judge", "encode", "total")}
    h = ResultHeader(frame_id=1, camera="cam0", line="l", prefix="l", product="p", bank_id="b", capture_time=0.0,
                     publish_time=0.0, verdict=True, p_anomaly=0.7, score=0.5, judge="llm-first_token", latency_ms=lat)  # fmt: skip
    sink, r = MetricsSink(MetricsConfig(port=0)), SinkResult(h, b"")
    t0 = time.perf_counter()
    for _ in range(n):
        sink.submit_result(r)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--product", default="tiles")
    ap.add_argument("--frames", type=int, default=400, help="timed frames per throughput run")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2, help="off/on pairs")
    ap.add_argument("--latency-frames", type=int, default=400)
    ap.add_argument("--qos", type=int, default=1, choices=[0, 1, 2])
    ap.add_argument("--mask", action="store_true", help="also publish each mask PNG over MQTT")
    ap.add_argument("--scrape-s", type=float, default=1.0, help="seconds between /metrics scrapes while on")
    ap.add_argument("--size", default="480x640", help="camera frame HxW")
    ap.add_argument("--threads", type=int, default=1, help="intra_op_threads, llm_threads and blas_threads")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.size.lower().split("x"))

    from runtime.pipeline.inspector import Inspector

    t = args.threads
    backend = BackendConfig(intra_op_threads=t, llm_threads=t, blas_threads=t)
    inspector = Inspector.from_config(args.bundle, backend, "first_token")
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="bench-mqtt-"))).start()
    collector = Collector(broker.port, "agpt/bench/+/result")

    def config(on: bool, **cam) -> DaemonConfig:
        extra = {}
        if on:
            extra = dict(mqtt=MqttConfig(port=broker.port, qos=args.qos, mask=args.mask), metrics=MetricsConfig(port=0))
        return DaemonConfig(
            bundle=args.bundle, product=args.product, camera=CameraConfig(kind="synthetic", source="bench", **cam),
            publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", sndhwm=10000, log_level="WARNING",
            resume_last_product=False, backend=backend, topic_prefix="bench.st1", **extra,
        )  # fmt: skip

    def scraper(d: Daemon, stop: threading.Event, seen: list) -> None:
        port = next((s.port for s in d.sinks.sinks if s.name == "metrics"), None)
        while port and not stop.wait(args.scrape_s):
            seen.append(len(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()))

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def sink_threads_cpu_s(d: Daemon) -> float:
        """CPU of the threads the sinks add: the MQTT worker, paho's network thread, the metrics HTTP server."""
        ours = {s._thread.ident for s in d.sinks.sinks if getattr(s, "_thread", None) is not None}
        total = 0.0
        for th in threading.enumerate():
            if th.ident in ours or th.name.startswith("paho-mqtt-client"):
                try:
                    f = Path(f"/proc/self/task/{th.native_id}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
                except (OSError, IndexError, ValueError):
                    pass
        return total

    def throughput(on: bool) -> tuple[float, dict]:
        n = args.warmup + args.frames
        d = Daemon(config(on, when_full="wait"), inspector, NoiseSource(shape, n=n))
        stop, scrapes = threading.Event(), []
        d.start()
        th = threading.Thread(target=scraper, args=(d, stop, scrapes), daemon=True)
        th.start()
        while d.judged < args.warmup:
            time.sleep(0.005)
        t0, j0, c0, s0 = time.perf_counter(), d.judged, cpu_s(), sink_threads_cpu_s(d)
        d.wait()
        sink_ms = (sink_threads_cpu_s(d) - s0) * 1e3 / max(d.judged - j0, 1)
        fps = (d.judged - j0) / (time.perf_counter() - t0)
        cpu_ms = (cpu_s() - c0) * 1e3 / max(d.judged - j0, 1)
        stop.set()
        th.join()
        sinks = {k: v.model_dump() for k, v in d.status().sinks.items()}
        d.shutdown()
        return fps, {"sinks": sinks, "scrapes": len(scrapes), "cpu_ms": cpu_ms, "sink_ms": sink_ms}

    runs: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    sink_cpu: list[float] = []
    for r in range(args.repeats):
        for on in (False, True) if r % 2 == 0 else (True, False):  # alternate the order too: no side always goes first
            fps, info = throughput(on)
            runs[on].append(fps)
            cpu[on].append(info["cpu_ms"])
            if on:
                sink_cpu.append(info["sink_ms"])
            extra = f"  mqtt {info['sinks'].get('mqtt')}  scrapes {info['scrapes']}" if on else ""
            print(
                f"  run {r + 1} {'on ' if on else 'off'}: {fps:7.1f} frames/s  {info['cpu_ms']:6.2f} ms CPU/frame{extra}",
                flush=True,
            )
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    pairs = sorted(b / a for a, b in zip(runs[False], runs[True]))  # each "on" run against the "off" run of its pair

    loop_us = metrics_submit_us()

    # -- latency at 80% of the off rate --
    rate = 0.8 * off
    collector.messages.clear()
    d = Daemon(config(True, when_full="drop_oldest"), inspector, NoiseSource(shape, fps=rate, n=args.latency_frames))
    d.start()
    sub = ResultSubscriber(d.publish_endpoint, ["bench.st1.result"], rcvhwm=100000)
    zmq_receipt = []
    reading_from = time.time() + 0.5  # the ZeroMQ subscription needs a moment to reach the daemon
    while not d.wait(0):
        m = sub.recv(0.2)
        if isinstance(m, ResultMessage) and m.header.capture_time >= reading_from:
            zmq_receipt.append((time.time() - m.header.capture_time) * 1e3)
    mqtt_stats = d.status().sinks["mqtt"]
    d.shutdown()
    sub.close()
    judged = d.judged
    collector.wait(lambda c: len(c.on("result")) >= judged - mqtt_stats.dropped, timeout=10, what="the last MQTT results")
    to_sub, cap_to_sub = [], []
    for _, payload, _, t_recv in collector.on("result"):
        h = ResultHeader.model_validate_json(payload)
        if h.capture_time >= reading_from:
            to_sub.append((t_recv - h.publish_time) * 1e3)
            cap_to_sub.append((t_recv - h.capture_time) * 1e3)
    collector.close()
    broker.stop()

    print(f"MQTT + metrics vs off ({args.bundle}, frames {shape[0]}x{shape[1]}, {t} thread(s) per engine, QoS {args.qos}"
          f"{', masks' if args.mask else ''}, /metrics every {args.scrape_s} s)")  # fmt: skip
    print(f"  frames/s off {off:7.1f}  on {on:7.1f}  on/off {on / off:.3f}  (medians of {args.repeats} runs of {args.frames})")
    print(f"  on/off per adjacent pair: median {statistics.median(pairs):.3f}  (min {pairs[0]:.3f}, max {pairs[-1]:.3f})")
    c_off, c_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"  CPU per frame (this process, all threads): off {c_off:.2f} ms  on {c_on:.2f} ms  (+{c_on - c_off:.2f} ms, "
          f"{c_on / c_off - 1:+.1%}); the machine's other load slows wall-clock frames/s, not this")  # fmt: skip
    print(f"  the sinks' own threads (MQTT worker, paho, metrics server): {statistics.median(sink_cpu):.3f} ms CPU/frame; "
          f"on the loop, counting one result for the metrics: {loop_us:.1f} us")  # fmt: skip
    print(f"  at {rate:.1f} frames/s offered, {len(to_sub)} results:")
    print(f"    result -> MQTT subscriber     median {statistics.median(to_sub):6.2f} ms  p99 {pct(to_sub, 99):6.2f} ms")
    print(f"    capture -> MQTT subscriber    median {statistics.median(cap_to_sub):6.2f} ms  p99 {pct(cap_to_sub, 99):6.2f} ms")
    print(
        f"    capture -> ZeroMQ subscriber  median {statistics.median(zmq_receipt):6.2f} ms  p99 {pct(zmq_receipt, 99):6.2f} ms"
    )
    print(f"    mqtt sink: delivered {mqtt_stats.delivered}, dropped {mqtt_stats.dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
