"""OPC UA figures: frames/s with the OPC UA server on (a PLC-style client subscribed) vs off, and the
result-to-variable latency seen through a subscription.

    python benchmarks/bench_opcua.py --bundle models/lite --product tiles
    python benchmarks/bench_opcua.py --bundle models/tiny --product tiles

Throughput: one daemon per round, the real inspector (opened once, shared by the rounds), an endless noise
source with `when_full: wait` (the daemon's capacity); rounds go off, on, on, off, off, on ... so a shared
host's load drifts across both and neither side always runs first. "on" = the `opcua:` sink plus a client in another process (a PLC is another machine:
in this process it would take the daemon's GIL) subscribed to the camera's ResultCounter and CreationTime.
Frames/s = judged frames over the timed window after --warmup frames.

Latency (the last "on" round): for every CreationTime notification the client gets, (a) the variable's
ServerTimestamp minus the result header's publish_time (CreationTime's value): result -> variable written;
(b) the client's receive time minus publish_time: result -> PLC notified (adds the subscription's publishing
interval, --publish-ms). Both clocks are this host's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NS = "urn:anomalygpt-edge:bench"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


# ---- the PLC-style client (a subprocess) ----------------------------------------------------------------------


async def client_main(url: str, seconds: float, publish_ms: float, out: Path) -> None:
    from asyncua import Client, ua

    lat_var, lat_client, counters = [], [], []

    class Handler:
        def datachange_notification(self, node, val, data):
            try:
                self.note(node, val, data)
            except Exception as e:  # asyncua swallows a handler's exceptions: say it
                print(f"client handler: {type(e).__name__}: {e}", file=sys.stderr)

        def note(self, node, val, data):
            now = time.time()
            if node.nodeid.Identifier.endswith("ResultCounter"):
                counters.append(val)
                return
            dv = data.monitored_item.Value
            if val.year < 2000:  # the initial value before the first result
                return
            t = val.timestamp()
            lat_client.append((now - t) * 1e3)
            if dv.ServerTimestamp is not None:
                lat_var.append((dv.ServerTimestamp.timestamp() - t) * 1e3)

    for _ in range(200):  # the daemon may still be starting
        try:
            c = Client(url, timeout=10)
            await c.connect()
            break
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
    else:
        raise SystemExit(f"cannot connect to {url}")
    idx = await c.get_namespace_index(NS)
    sub = await c.create_subscription(publish_ms, Handler())
    revised = sub.parameters.RequestedPublishingInterval
    nodes = [c.get_node(ua.NodeId(f"cam0.Result.{n}", idx)) for n in ("CreationTime", "ResultCounter")]
    await sub.subscribe_data_change(nodes, queuesize=100)
    Path(str(out) + ".ready").write_text("1")
    stop, deadline = Path(str(out) + ".stop"), time.monotonic() + seconds
    while not stop.exists() and time.monotonic() < deadline:  # the bench says when its window is over
        await asyncio.sleep(0.05)
    await c.disconnect()
    out.write_text(json.dumps({"var_ms": lat_var, "client_ms": lat_client, "counters": counters, "publish_ms": revised}))


# ---- the daemon side ----------------------------------------------------------------------------------------------


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name (/proc; Linux)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_round(args, inspector, opcua_on: bool, tmp: Path, k: int) -> dict:
    from bench_daemon import NoiseSource

    from runtime.line.config import BackendConfig, CameraConfig, DaemonConfig
    from runtime.line.daemon import Daemon
    from runtime.sinks.opcua.config import OpcuaConfig

    opcua = OpcuaConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port()}", namespace=NS) if opcua_on else None
    cfg = DaemonConfig(
        bundle=args.bundle, product=args.product, camera=CameraConfig(kind="synthetic", source="bench", when_full="wait"),
        publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", log_level="WARNING", resume_last_product=False,
        backend=BackendConfig(intra_op_threads=args.threads, llm_threads=args.threads, blas_threads=1), opcua=opcua,
    )  # fmt: skip
    d = Daemon(cfg, inspector=inspector, source=NoiseSource(shape=(480, 640)))
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_before = r.ru_utime + r.ru_stime
    proc, out = None, tmp / f"client{k}.json"
    d.start()
    try:
        if opcua_on and not args.no_client:
            proc = subprocess.Popen([sys.executable, __file__, "--client", opcua.endpoint, "--seconds", str(args.client_s),
                                     "--publish-ms", str(args.publish_ms), "--out", str(out)])  # fmt: skip
            deadline = time.monotonic() + 60
            while not Path(str(out) + ".ready").exists():
                assert proc.poll() is None and time.monotonic() < deadline, "the OPC UA client did not subscribe"
                time.sleep(0.02)
        n0 = d.judged
        while d.judged < n0 + args.warmup:
            time.sleep(0.005)
        n1, t1, c1, th1 = d.judged, time.perf_counter(), time.process_time(), thread_cpu()
        while d.judged < n1 + args.frames:
            time.sleep(0.005)
        fps = (d.judged - n1) / (time.perf_counter() - t1)
        n = d.judged - n1
        cpu_ms = (time.process_time() - c1) * 1e3 / n  # this process's CPU per frame: less load-bound than frames/s
        th2 = thread_cpu()
        opcua_ms = sum(th2[k] - th1.get(k, 0.0) for k in th2 if k in ("opcua", "sink-opcua") or k.startswith("opcua-")) * 1e3 / n
        stats = d.sinks.stats().get("opcua")
        if proc is not None:
            Path(str(out) + ".stop").write_text("1")
            proc.wait(60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        d.shutdown()
    res = {"fps": fps, "judged": d.judged, "cpu_ms": cpu_ms, "opcua_ms": opcua_ms}
    if proc is not None:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        res["client_cpu_s"] = r.ru_utime + r.ru_stime - client_cpu_before
        res["client"] = json.loads(out.read_text())
        res["sink"] = stats.model_dump() if stats else None
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "lite")
    p.add_argument("--product", default="tiles")
    p.add_argument("--frames", type=int, default=400, help="timed frames per round")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime and llama.cpp threads")
    p.add_argument("--publish-ms", type=float, default=10.0, help="the client's requested publishing interval")
    p.add_argument("--client-s", type=float, default=600.0, help="the client gives up after this (it stops when the window ends)")
    p.add_argument("--no-client", action="store_true", help="on = the server alone, nobody subscribed")
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        asyncio.run(client_main(args.client, args.seconds, args.publish_ms, args.out))
        return
    import tempfile

    from runtime.pipeline.blas import set_blas_threads
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.inspector import Inspector

    set_blas_threads(1)
    t0 = time.perf_counter()
    insp = Inspector.from_config(args.bundle, BackendConfig(intra_op_threads=args.threads, llm_threads=args.threads))
    print(
        f"bundle {args.bundle} opened in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_opcua_"))
    off, on, last = [], [], None
    cpu = {False: [], True: []}
    for k in range(args.rounds):
        for flag in (False, True) if k % 2 == 0 else (True, False):  # ABBA: neither side always goes first
            r = one_round(args, insp, flag, tmp, 2 * k + flag)
            (on if flag else off).append(r["fps"])
            cpu[flag].append(r["cpu_ms"])
            last = r if flag else last
            extra = f", of it the OPC UA threads {r['opcua_ms']:.2f}" if flag else ""
            print(f"round {k + 1} opcua {'on ' if flag else 'off'}: {r['fps']:.1f} frames/s, daemon CPU {r['cpu_ms']:.2f} ms/frame"
                  f"{extra}  (load {os.getloadavg()[0]:.2f})")  # fmt: skip
    ratio = statistics.mean(on) / statistics.mean(off)
    print(f"frames/s off {statistics.mean(off):.1f}, on {statistics.mean(on):.1f}: on/off = {ratio:.3f}")
    c_off, c_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"daemon CPU per frame off {c_off:.2f} ms, on {c_on:.2f} ms: +{c_on - c_off:.2f} ms "
          f"(CPU-bound frames/s ratio {c_off / c_on:.3f}; the client's CPU is another process's)")  # fmt: skip
    if args.no_client:
        return
    c = last["client"]
    cnt = c["counters"]
    steps = [b - a for a, b in zip(cnt, cnt[1:])]
    print(f"subscription (publishing interval {c['publish_ms']:.0f} ms): {len(c['var_ms'])} CreationTime notifications, "
          f"ResultCounter notifications {len(cnt)} (steps: {dict(sorted(collections_counter(steps).items()))})")  # fmt: skip
    for key, what in (("var_ms", "result -> variable written (ServerTimestamp)"), ("client_ms", "result -> client notified")):
        xs = c[key]
        print(f"{what}: median {statistics.median(xs):.2f} ms, p99 {pct(xs, 99):.2f} ms (n={len(xs)})")
    print(f"opcua sink: {last['sink']}; the client process used {last['client_cpu_s']:.2f} s of CPU in the on round")


def collections_counter(xs):
    import collections

    return collections.Counter(xs)


if __name__ == "__main__":
    main()
