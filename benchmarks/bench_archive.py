"""Archive figures: frames/s with the archive on vs off (one run, alternating rounds), query timings on 100,000
SQLite rows, and retention holding free space while images are written.

    python benchmarks/bench_archive.py --bundle models/tiny --product tiles --threads 1 --llm-threads 1 --blas-threads 1
    python benchmarks/bench_archive.py --fake          # the fake inspector: the archive's own cost, no model

1. Throughput: the daemon as `agpt run` runs it (it opens the bundle's Inspector), one camera with an endless
   noise source (`when_full: wait`, so the figure is capacity), judging paused until a subscriber is on. Rounds
   alternate archive off / on (`archive: {url: sqlite:///..., images: rejects}`) so the machine's load drifts
   into both alike; each round times --frames frames after --warmup from the results' publish_time. With the
   archive on, the archive's rows are counted after the round: rows == frames_judged - row drops.
2. Queries: 100,000 rows over 30 days (10 products at random, a lot every 1,000 rows) inserted into a new SQLite archive,
   then `agpt archive query`'s select (by lot, by product within a day, by an hour) timed, median of 7.
3. Retention: a tmpfs (--disk-mb) holds the database and the images (JPEG of camera-sized noise, images: all);
   ArchiveSink writes --soak-frames results with min_free_percent; the lowest free share seen is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sinks"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sqlalchemy as sa

from runtime.line.config import BackendConfig, CameraConfig, DaemonConfig
from runtime.line.control import request
from runtime.line.daemon import Daemon
from runtime.sinks.archive import query as aq
from runtime.sinks.archive import schema
from runtime.sinks.archive.config import ArchiveConfig, RetentionConfig
from runtime.sinks.archive.writer import ArchiveSink, make_engine


def _source(shape, seed):
    from bench_daemon import NoiseSource

    return NoiseSource(shape, seed=seed)


def throughput_round(args, archive: ArchiveConfig | None, shape) -> dict:
    import resource

    import zmq

    backend = BackendConfig(intra_op_threads=args.threads, llm_threads=args.llm_threads, blas_threads=args.blas_threads)
    if args.fake:
        from _daemon_fakes import FakeInspector, make_bundle

        bundle = make_bundle(Path(tempfile.mkdtemp(prefix="agpt-bench-bundle-")))
        inspector, product = FakeInspector(), "widget"
    else:
        bundle, inspector, product = args.bundle, None, args.product
    cfg = DaemonConfig(
        bundle=bundle, product=product, publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*", sndhwm=100000,
        log_level="WARNING", resume_last_product=False, backend=backend, start_paused=True, archive=archive,
        camera=CameraConfig(name="cam0", kind="synthetic", source="bench", when_full="wait"),
    )  # fmt: skip
    d = Daemon(cfg, inspector=inspector, source=_source(shape, 0))
    d.start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000000)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(d.publish_endpoint)
    for t in ("result", "status"):
        sub.setsockopt(zmq.SUBSCRIBE, f"{cfg.topic_prefix}.{t}".encode())
    times, verdicts, got = [], [], 0
    try:
        while not sub.poll(500):
            pass
        request(d.control_endpoint, {"cmd": "resume"}, 10)
        while len(times) < args.frames:
            if not sub.poll(60000):
                raise SystemExit("no result for 60 s")
            frames = sub.recv_multipart()
            if not frames[0].endswith(b".result"):
                continue
            got += 1
            if got == args.warmup + 1:
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            if got > args.warmup:
                h = json.loads(frames[1])
                times.append(h["publish_time"])
                verdicts.append(bool(h["verdict"]))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        request(d.control_endpoint, {"cmd": "pause"}, 10)
    finally:
        sub.close()
        d.shutdown()
    cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    out = {"fps": (len(times) - 1) / (times[-1] - times[0]), "rejects": sum(verdicts) / len(verdicts),
           "cpu_ms": cpu_s * 1e3 / (len(times) - 1)}  # fmt: skip
    if archive is not None:
        sink = next(s for s in d.sinks.sinks if s.name == "archive")
        eng = make_engine(archive)
        with eng.connect() as c:
            rows = c.execute(sa.select(sa.func.count()).select_from(schema.results)).scalar()
        eng.dispose()
        out.update(rows=rows, judged=d.judged, row_drops=sink.rows_dropped, stats=sink.stats().model_dump())
    return out


def throughput(args) -> None:
    shape = (480, 640)
    tmp = Path(tempfile.mkdtemp(prefix="agpt-bench-archive-"))
    modes = [m.strip() for m in args.images.split(",") if m.strip()]
    off, on = [], {m: [] for m in modes}
    try:
        for k in range(args.rounds):
            off.append(throughput_round(args, None, shape))
            line = f"  round {k + 1}: off {off[-1]['fps']:.1f} ({off[-1]['cpu_ms']:.2f} ms CPU)"
            for m in modes:
                cfg = ArchiveConfig(url=f"sqlite:///{tmp}/r{k}{m}/results.db", images=m)
                r = throughput_round(args, cfg, shape)
                on[m].append(r)
                line += f", on (images {m}) {r['fps']:.1f} ({r['cpu_ms']:.2f} ms CPU) [rows {r['rows']} = judged {r['judged']} - drops {r['row_drops']}]"
            print(line + " frames/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    f_off = statistics.median(r["fps"] for r in off)
    rej = statistics.mean(r["rejects"] for r in off)
    print(f"throughput ({'fake inspector' if args.fake else args.bundle}, 480x640 noise frames, {rej:.0%} judged anomalous; "
          f"median of {args.rounds} alternating rounds of {args.frames} frames): archive off {f_off:.1f} frames/s, "
          f"{statistics.median(r['cpu_ms'] for r in off):.2f} ms CPU a frame (the whole process)")  # fmt: skip
    for m in modes:
        f_on = statistics.median(r["fps"] for r in on[m])
        ok = all(r["rows"] == r["judged"] - r["row_drops"] for r in on[m])
        cpu_on = statistics.median(r["cpu_ms"] for r in on[m])
        cpu_off = statistics.median(r["cpu_ms"] for r in off)
        print(f"  archive on, images {m:<8} {f_on:.1f} frames/s, on/off = {f_on / f_off:.3f}; CPU a frame {cpu_on:.2f} ms "
              f"({cpu_on - cpu_off:+.2f} ms = {cpu_on / cpu_off - 1:+.1%}); rows == judged - row drops "
              f"in every round: {ok}; row drops {[r['row_drops'] for r in on[m]]}")  # fmt: skip


def queries(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agpt-bench-query-"))
    url = f"sqlite:///{tmp}/results.db"
    try:
        eng = make_engine(ArchiveConfig(url=url))
        n, t_start = args.rows, 1_790_000_000.0
        rng = np.random.default_rng(0)
        span = 30 * 86400
        t = np.sort(t_start + rng.uniform(0, span, n))
        products = [f"product{k}" for k in range(10)]
        prod = rng.integers(0, 10, n)
        rows = [dict(time=float(t[i]), publish_time=float(t[i]) + 0.015, camera=f"cam{i % 2}", line="line1",
                     station="station1", product=products[prod[i]], bank_id="b", frame_id=i + 1,
                     verdict=bool(rng.random() < 0.05), p_anomaly=0.1, score=0.2, locations="", judge="llm-first_token",
                     latency_ms=15.0, image_path=None, mask_path=None, part_id=f"P{i:07d}", lot=f"L{i // 1000:04d}")
                for i in range(n)]  # fmt: skip
        with eng.connect() as c:
            schema.migrate(c)
            t0 = time.perf_counter()
            with c.begin():
                c.execute(sa.insert(schema.results), rows)
            ins = time.perf_counter() - t0
        eng.dispose()
        print(f"queries on {n:,} SQLite rows (bulk insert {ins:.1f} s; file {(tmp / 'results.db').stat().st_size / 1e6:.1f} MB):")
        engine, conn, _ = aq.connect(url)
        mid = t_start + span / 2
        cases = {
            "by lot (L0050)": aq.select(lot="L0050"),
            "by product, one day": aq.select(product="product3", since=mid, until=mid + 86400),
            "by time, one hour": aq.select(since=mid, until=mid + 3600),
            "rejects of a lot": aq.select(lot="L0050", verdict=(True, True)),
            "by part id": aq.select(part_id="P0050123"),
        }
        for name, q in cases.items():
            ms = []
            for _ in range(7):
                t0 = time.perf_counter()
                got = aq.rows(conn, q)
                ms.append((time.perf_counter() - t0) * 1e3)
            plan = " ".join(r[-1] for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(q.compile(compile_kwargs={"literal_binds": True}))).all())  # fmt: skip
            print(f"  {name:<22} {statistics.median(ms):7.2f} ms median ({len(got)} rows)   plan: {plan}")
        conn.close()
        engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def retention(args) -> None:
    from _archive_helpers import make_result, small_disk

    with small_disk(args.disk_mb) as disk:
        ret = RetentionConfig(min_free_percent=args.min_free, check_interval_s=args.check_s, batch=args.batch)
        s = ArchiveSink(ArchiveConfig(url=f"sqlite:///{disk}/results.db", images="all", jpeg_quality=90, retention=ret))
        s.start()
        imgs = [np.random.default_rng(k).integers(0, 255, (480, 640, 3), dtype=np.uint8) for k in range(4)]
        lows = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                u = shutil.disk_usage(disk)
                lows.append(100 * u.free / u.total)
                stop.wait(0.005)

        w = threading.Thread(target=watch)
        w.start()
        t0 = time.perf_counter()
        for i in range(1, args.soak_frames + 1):
            s.submit_result(make_result(i, verdict=True, image=imgs[i % 4]))
            while s.stats().queued > 20:  # a line at the writer's pace, not a queue overflow
                time.sleep(0.001)
        while s.stats().queued:
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        stop.set()
        w.join()
        s.stop()
        u = shutil.disk_usage(disk)
        print(f"retention soak: {args.soak_frames} frames with images (480x640 noise JPEG q90 + mask) through a {args.disk_mb} MB "
              f"tmpfs, min_free_percent {args.min_free}, check every {args.check_s} s or 1% of the disk written, {args.batch} rows a step: {s.rows_written} rows written, "
              f"{s.rows_dropped} dropped, {s.retention.rows_deleted} deleted ({s.retention.bytes_freed / 1e6:.0f} MB of files); "
              f"free space lowest {min(lows):.1f}%, median {statistics.median(lows):.1f}%, at the end {100 * u.free / u.total:.1f}% "
              f"({args.soak_frames / wall:.0f} frames/s written)")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "tiny")
    p.add_argument("--product", default="tiles")
    p.add_argument("--fake", action="store_true", help="the fake inspector instead of a bundle")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--llm-threads", type=int, default=1)
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=600, help="timed frames per round")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", default="none,rejects", help="archive image modes to compare with off (comma list)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--disk-mb", type=int, default=32)
    p.add_argument("--min-free", type=float, default=25.0)
    p.add_argument("--check-s", type=float, default=10.0)
    p.add_argument("--soak-frames", type=int, default=1500)
    p.add_argument("--batch", type=int, default=10, help="retention rows per step (a small disk: a few images)")
    p.add_argument("--only", choices=["throughput", "queries", "retention"], default=None)
    args = p.parse_args()
    for name, fn in (("throughput", throughput), ("queries", queries), ("retention", retention)):
        if args.only in (None, name):
            fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
