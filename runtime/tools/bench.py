"""`agpt bench`: per-stage latency, frames/s and peak memory of a bundle, beside the PyTorch reference.

    agpt bench --bundle models/tiny [--frames 20] [--cameras 1,2,4] [--reference CKPT_DIR] [--json]

Ours, one frame at a time through Inspector.judge and the daemon's own publishing (runtime.line.results
make_result: mask PNG + header, then its Publisher on inproc), in both verdict modes:
  first_token  preprocess, encoder, map, prompt, llm (one prefill: P(anomaly) from ' Yes' / ' No'), publish
  answer       the same, then llm_prefill + llm_decode (greedy, --new-tokens at most, the reference's stop rule)
Medians and p99 over --frames frames (after --warmup frames), end-to-end frames/s, peak RSS.

--reference CKPT_DIR: the reference pipeline (export.reference: PyTorch eager fp32 + transformers
generate) on the same weights and frames, in a child process (this one never imports torch), with the
same --new-tokens cap: random weights rarely say '##', and a real answer is about 24 tokens. It does the
per-image work of the released generate(), and the work it repeats although it depends only on the
product (text ensemble; with shots: the shots, a second query encoding, a discarded decoder map) is the
"per_call" stage, so both ratios print: against the reference as released and with that work cached.

Several cameras: for each count in --cameras, the daemon itself (runtime.line.daemon.Daemon, with this
inspector and its own capture threads, inspection loop, batches and publisher) judges that many cameras
fed round robin with the frames; a subscriber counts the results it publishes. Frames/s in total and per
camera, each camera's count (none starved), and capture->publish latency from the daemon's headers.

Frames: --images DIR, else the cookie test images when ../shared/datasets/cookie exists, else noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.engines.select import describe
from runtime.tools.bench_cameras import run_cameras
from runtime.tools.bench_common import cpu_name, load_frames, peak_rss_mb, rss_mb, summary
from runtime.tools.bench_reference import check_sources, run_reference
from runtime.tools.engine_args import add_engine_arguments, backend_from_args

STAGES = (
    "preprocess",
    "encoder",
    "per_call",
    "map",
    "prompt",
    "llm",
    "llm_prefill",
    "llm_decode",
    "publish",
    "total",
    "total_cached",
)


# ---- publishing, as the daemon does it ---------------------------------------------------------------


class BenchPublisher:
    """The daemon's per-result work, with the daemon's own code: results.make_result (mask PNG + header) and
    its Publisher (queue -> XPUB thread), on inproc, drained by one subscriber."""

    def __init__(self):
        import zmq

        from runtime.line.publish import Publisher

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.publisher = Publisher(self.ctx, "inproc://agpt-bench", "bench", sndhwm=100000, heartbeat_s=3600.0)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect("inproc://agpt-bench")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"bench.result")
        self.received = 0
        self._stop = threading.Event()
        self.publisher.start()
        self._thread = threading.Thread(target=self._drain, name="bench-subscriber", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        poller = self.zmq.Poller()
        poller.register(self.sub, self.zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50):
                while True:
                    try:
                        self.sub.recv_multipart(self.zmq.NOBLOCK)
                        self.received += 1
                    except self.zmq.Again:
                        break

    def send(self, j, camera: str, frame_id: int, pack, image: np.ndarray, t0: float, t1: float) -> float:
        """Publish one judgement as the daemon does; returns the milliseconds it took."""
        from runtime.line.camera import Frame
        from runtime.line.results import make_result

        t = time.perf_counter()
        frame = Frame(frame_id=frame_id, image=image, camera=camera, capture_time=time.time(), capture_mono=t0)
        header, png = make_result(frame, pack, j, t0, t1, prefix="bench")
        self.publisher.publish_result(header, png)
        return (time.perf_counter() - t) * 1e3

    def close(self) -> None:
        self.publisher.stop(flush_s=0.5)
        self._stop.set()
        self._thread.join(1.0)
        self.sub.close(0)
        self.ctx.term()


# ---- ours -------------------------------------------------------------------------------------------


def open_inspector(bundle: Path, max_batch: int, threads: int | None, llm_threads: int | None, new_tokens: int, backend=None):
    """backend: a BackendConfig (--engine ...); threads / llm_threads set on it where given."""
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.inspector import Inspector

    backend = (backend or BackendConfig()).model_copy(
        update={k: v for k, v in (("intra_op_threads", threads), ("llm_threads", llm_threads)) if v is not None}
    )
    # the context is backend.llm_ctx per sequence (1024: a frame's prompt plus the capped answer fits easily)
    return Inspector.from_config(bundle, backend, "first_token", max_new_tokens=new_tokens, max_batch=max_batch)


def product_pack(insp, product: str | None, shots: list[Path]):
    from runtime.pipeline.products import build_pack
    from runtime.pipeline.prompt import FALLBACK_PRODUCT
    from runtime.pipeline.store import ProductStore

    store = ProductStore(insp.bundle.root / "products", insp.pack_spec, insp.manifest_products)
    names = store.names()
    if product is None:
        product = next((n for n in names if n != FALLBACK_PRODUCT), names[0] if names else None)
        if product is None:
            raise AgptError(f"{insp.bundle.root}: no products (pass --product and --shots)")
    if shots:
        base = store.load(product) if store.exists(product) else None
        return build_pack(insp, product, base.description if base else "", shots)
    return store.load(product)


def run_ours(insp, frames: list[np.ndarray], pack, mode: str, warmup: list[np.ndarray], pub: BenchPublisher) -> tuple[dict, list]:
    """One frame at a time, as the one-camera daemon: judge, then publish. Per-stage samples + judgements."""
    insp.verdict_mode = mode
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    judgements = []
    for f in warmup:
        t = time.monotonic()
        pub.send(insp.judge(f, pack), "cam0", 0, pack, f, t, time.monotonic())
    t_all = time.perf_counter()
    for i, f in enumerate(frames):
        t, tm = time.perf_counter(), time.monotonic()
        j = insp.judge(f, pack)
        publish_ms = pub.send(j, "cam0", i + 1, pack, f, tm, time.monotonic())
        total = (time.perf_counter() - t) * 1e3
        for k, v in j.latency_ms.items():
            if k in samples:
                samples[k].append(v)
        samples["publish"].append(publish_ms)
        samples["total"].append(total)
        judgements.append(j)
    wall = time.perf_counter() - t_all
    out = {"stages": {k: summary(v) for k, v in samples.items() if v}, "fps": len(frames) / wall}
    out["peak_rss_mb"] = peak_rss_mb()
    return out, judgements


# ---- report -----------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def table(report: dict) -> str:
    modes = report["ours"]
    ref = report.get("reference")
    cols = [(f"ours {name}", modes[name]) for name in ("first_token", "answer", "calibrated") if name in modes]
    if ref:
        cols.append(("reference as released", ref))
    head = f"{'stage (median / p99 ms)':<24}" + "".join(f"{c:>24}" for c, _ in cols)
    lines = [head, "-" * len(head)]
    if report.get("engine"):
        e = report["engine"]
        lines.insert(
            0, f"engine {e['engine']}: {e['graphs']}; loaded in {e['load_s']:.2f} s, {e['rss_after_load_mb']:.0f} MB resident"
        )
    for s in STAGES:
        cells = []
        for _, m in cols:
            st = (m or {}).get("stages", {}).get(s)
            cells.append(f"{st['median_ms']:>10.2f} / {st['p99_ms']:<10.2f}  " if st else f"{'-':>24}")
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{s:<24}" + "".join(f"{c:>24}" for c in cells))
    lines.append(f"{'frames/s':<24}" + "".join(f"{(m or {}).get('fps', 0):>22.1f}  " for _, m in cols))
    lines.append(f"{'peak RSS MB':<24}" + "".join(f"{(m or {}).get('peak_rss_mb', 0):>22.0f}  " for _, m in cols))
    if report.get("ratios"):
        lines.append("")
        for k, v in report["ratios"].items():
            lines.append(f"{k:<48} {v:8.1f}x" if v else f"{k:<48}        -")
    if report.get("agreement"):
        lines.append(f"agreement with the reference: {json.dumps(report['agreement'])}")
    if report.get("cameras"):
        lines.append("")
        lines.append("several cameras (camera threads preprocess; one judge_batch per round; first_token):")
        lines.append(
            f"{'cameras':<10}{'frames/s total':>16}{'per camera':>12}{'vs 1 cam':>10}{'mean batch':>12}{'CPU ms/frame':>14}"
            f"{'cores busy':>12}   per-camera frames   latency median/p99 ms"
        )
        base = report["cameras"][0]["fps_total"] if report["cameras"][0]["cameras"] == 1 else None
        for c in report["cameras"]:
            rel = f"{c['fps_total'] / base:>9.2f}x" if base else f"{'-':>10}"
            lines.append(
                f"{c['cameras']:<10}{c['fps_total']:>16.1f}{c['fps_per_camera']:>12.1f}{rel}{c['mean_batch']:>12.2f}"
                f"{c['cpu_ms_per_frame']:>14.1f}{c['cores_busy']:>12.2f}   "
                f"{str(c['per_camera_frames']):<20}{c['latency']['median_ms']:.1f} / {c['latency']['p99_ms']:.1f}"
            )
    if report.get("camera_ceiling"):
        c = report["camera_ceiling"]
        lines.append(
            f"ceiling on this host ({os.cpu_count()} cores / cheapest CPU ms per frame): {c['fps']:.0f} frames/s = {c['vs_1_cam']:.2f}x 1 cam"
        )
    if report.get("camera_scaling_vs_one_at_a_time"):
        vs = ", ".join(f"{k} cam {v:.2f}x" for k, v in report["camera_scaling_vs_one_at_a_time"].items())
        lines.append(f"vs one frame at a time in one thread (today's one-camera loop): {vs}")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


# ---- CLI --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--frames", type=int, default=20, help="timed frames per mode (and per camera for --cameras)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames first")
    p.add_argument("--cameras", default="1,2,4", help="camera counts for the throughput runs ('' to skip)")
    p.add_argument("--modes", default="first_token,answer", help="verdict modes timed one frame at a time")
    p.add_argument(
        "--reference", type=Path, default=None, metavar="CKPT_DIR", help="also run the PyTorch reference on these checkpoints"
    )
    p.add_argument("--images", type=Path, default=None, help="folder of frames (default: cookie test images, else noise)")
    p.add_argument("--product", default=None, help="product pack to judge with (default: the bundle's first)")
    p.add_argument(
        "--shots", type=Path, nargs="*", default=[], help="normal shots: a bank pack built from them (and given to the reference)"
    )
    p.add_argument("--new-tokens", type=int, default=24, help="answer cap for both sides (a real answer is ~24 tokens)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (and torch threads of the reference)")
    p.add_argument("--llm-threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--blas-threads", type=int, default=None, help="numpy BLAS threads for the bank map (as backend.blas_threads)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:
    from runtime.pipeline.bundle import load_bundle

    if args.frames < 1:
        raise AgptError("--frames must be at least 1")
    cams = sorted({int(c) for c in str(args.cameras).split(",") if c.strip()})
    if any(c < 1 for c in cams):
        raise AgptError(f"--cameras {args.cameras}: counts must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("first_token", "answer") for m in modes):
        raise AgptError(f"--modes {args.modes}: first_token and/or answer")
    bundle = load_bundle(args.bundle)
    if args.blas_threads is not None:
        from runtime.pipeline.blas import set_blas_threads

        set_blas_threads(args.blas_threads)
    frames, source = load_frames(args.frames, args.images)
    warmup = frames[: args.warmup]
    backend = backend_from_args(args)
    t_load = time.perf_counter()
    insp = open_inspector(args.bundle, max(cams + [1]), args.threads, args.llm_threads, args.new_tokens, backend)
    load_s = time.perf_counter() - t_load
    if insp.llm is None:
        modes = []  # a lite bundle: the calibrated judge; the stages still print
    pack = product_pack(insp, args.product, args.shots)
    if args.reference and insp.llm is None:
        raise AgptError(f"{bundle.root}: a {bundle.manifest.kind} bundle without an LLM has no PyTorch reference to compare with")
    if args.reference and pack.bank and not args.shots:
        raise AgptError(f"product {pack.name!r} has normal shots: pass them with --shots so the reference uses them too")
    report: dict = {
        "bundle": str(bundle.root),
        "kind": bundle.manifest.kind,
        "llm_quant": getattr(bundle.manifest.llm, "quant", None),
        "product": pack.name,
        "bank": bool(pack.bank),
        "frames": args.frames,
        "warmup": args.warmup,
        "source": source,
        "frame_shape": list(frames[0].shape),
        "new_tokens": args.new_tokens,
        "host": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_avg": list(os.getloadavg()),
            "python": platform.python_version(),
        },
        "threads": {"onnxruntime": args.threads, "llama_cpp": args.llm_threads, "blas": args.blas_threads},
        "engine": {
            "engine": backend.engine,
            "graphs": describe(insp.vision),
            "load_s": round(load_s, 2),
            "rss_after_load_mb": round(rss_mb(), 1),
        },
        "ours": {},
        "warnings": [],
    }
    pub = BenchPublisher()
    judged = {}
    try:
        for mode in modes or ["calibrated"]:
            print(f"ours: {mode}, {args.frames} frames ...", file=sys.stderr)
            m = mode if mode != "calibrated" else "first_token"
            report["ours"][mode], judged[mode] = run_ours(insp, frames, pack, m, warmup, pub)
        report["cameras"] = []
        for c in cams:
            print(f"ours: {c} camera(s), {args.frames} frames each ...", file=sys.stderr)
            report["cameras"].append(run_cameras(insp, frames, pack, c, args.frames))
    finally:
        pub.close()
    if report["cameras"] and report["cameras"][0]["cameras"] == 1:
        base = report["cameras"][0]["fps_total"]
        report["camera_scaling"] = {str(c["cameras"]): c["fps_total"] / base for c in report["cameras"]}
        # the most any camera count could reach here: every core busy at the cheapest CPU cost per frame seen
        cheapest = min(c["cpu_ms_per_frame"] for c in report["cameras"])
        report["camera_ceiling"] = {
            "fps": (os.cpu_count() or 1) * 1e3 / cheapest,
            "vs_1_cam": (os.cpu_count() or 1) * 1e3 / cheapest / base,
        }
    one = report["ours"].get("first_token") or report["ours"].get("calibrated")
    if report["cameras"] and one:
        # against the one-frame-at-a-time loop (preprocessing in the loop, as the one-camera daemon runs today)
        report["camera_scaling_vs_one_at_a_time"] = {str(c["cameras"]): c["fps_total"] / one["fps"] for c in report["cameras"]}
    if args.reference:
        report["warnings"] += check_sources(bundle, args.reference)
        ref = run_reference(args, frames, warmup, pack, args.shots)
        results = ref.pop("results")
        report["reference"] = ref
        ft, ans = report["ours"].get("first_token"), report["ours"].get("answer")
        ref_total, ref_cached = ref["stages"]["total"]["median_ms"], ref["stages"]["total_cached"]["median_ms"]
        ft_total, ans_total = ft and ft["stages"]["total"]["median_ms"], ans and ans["stages"]["total"]["median_ms"]
        report["ratios"] = {
            "reference answer as released / ours first_token": ratio(ref_total, ft_total),
            "reference answer as released / ours answer": ratio(ref_total, ans_total),
            "reference, product work cached / ours first_token": ratio(ref_cached, ft_total),
            "reference, product work cached / ours answer": ratio(ref_cached, ans_total),
            "reference prefill / ours first_token llm": ratio(
                ref["stages"]["llm_prefill"]["median_ms"], ft and ft["stages"]["llm"]["median_ms"]
            ),
        }
        for s in ("encoder", "map", "prompt"):
            ours_s = (ft or ans or {}).get("stages", {}).get(s)
            report["ratios"][f"{s}: reference / ours"] = ratio(ref["stages"][s]["median_ms"], ours_s and ours_s["median_ms"])
        agree: dict = {"frames": len(results)}
        if "first_token" in judged:
            rp, op = [r["p_anomaly"] for r in results], [j.p_anomaly for j in judged["first_token"]]
            agree["first_token_p_max_abs_diff"] = float(max(abs(a - b) for a, b in zip(op, rp)))
            agree["first_token_verdicts_equal"] = f"{sum((a > 0.5) == (b > 0.5) for a, b in zip(op, rp))}/{len(op)}"
        if "answer" in judged:
            texts = [j.answer for j in judged["answer"]]
            agree["answers_equal"] = f"{sum(a == r['answer'] for a, r in zip(texts, results))}/{len(texts)}"
        report["agreement"] = agree
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0
