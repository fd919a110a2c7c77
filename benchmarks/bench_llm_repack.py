"""llama.cpp's CPU weight repacking (use_extra_bufts) and mmap, on vs off, in one run: resident memory, load
time and first-token prefill speed of the line's LLM (backend.llm_repack / backend.llm_mmap).

Each setting runs in its own fresh process (resident memory of one process is what a setting costs; a
process that loaded another setting before would carry its heap). Resident memory is split as the kernel
counts it: RssAnon (private: the repacked copy lives here) and RssFile (the mapped GGUF's pages, shared with
the page cache and droppable under pressure).

    python benchmarks/bench_llm_repack.py --bundle models/tiny
    python benchmarks/bench_llm_repack.py --shape small          # writes a small-shape Q4_K_M GGUF first (~40 s)

Figures print; nothing is asserted (a shared machine's timings vary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = [(True, True), (False, True), (True, False), (False, False)]  # (repack, mmap)
QUESTION = "This is a photo of a cookie for anomaly detection. Is there any anomaly in the image?"


def _status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0  # kB -> MiB
    return out


def child(gguf: str, layout_json: str, repack: bool, mmap: bool, threads: int, frames: int, n_embd: int) -> dict:
    import numpy as np

    from runtime.pipeline.llm import LlmSession
    from runtime.pipeline.prompt import PromptLayout

    layout = PromptLayout.model_validate_json(layout_json)
    before = _status()
    t = time.perf_counter()
    s = LlmSession(gguf, layout, n_ctx=1024, n_threads=threads, n_embd=n_embd, repack=repack, mmap=mmap)
    load_s = time.perf_counter() - t
    loaded = _status()
    rng = np.random.default_rng(0)
    times = []
    for i in range(frames + 1):
        e, p = rng.standard_normal((1, n_embd)).astype(np.float32), rng.standard_normal((18, n_embd)).astype(np.float32)
        t = time.perf_counter()
        s.first_token(e, p, QUESTION)
        if i:  # the first prefill warms the caches
            times.append((time.perf_counter() - t) * 1e3)
    after = _status()
    s.close()
    return {
        "repack": repack,
        "mmap": mmap,
        "load_s": load_s,
        "rss_mb": loaded["VmRSS"] - before["VmRSS"],
        "anon_mb": loaded["RssAnon"] - before["RssAnon"],
        "file_mb": loaded["RssFile"] - before["RssFile"],
        "peak_mb": after["VmHWM"],
        "prefill_ms": statistics.median(times),
        "prefill_min_ms": min(times),  # the least disturbed by other load on a shared host
    }


def make_gguf(shape: str, root: Path) -> tuple[Path, str, int]:
    from export.llm_export import export_llm
    from export.tiny import SHAPES
    from export.tiny_llm import write_tiny_pandagpt, write_tiny_vicuna

    sh = SHAPES[shape]
    cfg = write_tiny_vicuna(root / "vicuna", vocab_size=sh["vocab"], dtype=sh["dtype"], **(sh["llm"] or {}))
    write_tiny_pandagpt(root / "pandagpt.pt", cfg["hidden_size"], cfg["num_hidden_layers"], embed_dim=32, rank=sh["rank"])
    info = export_llm(root / "vicuna", root / "pandagpt.pt", root / "llm.gguf", "Q4_K_M", progress=lambda s: None)
    return root / "llm.gguf", info.layout.model_dump_json(), info.n_embd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a bundle with an LLM (its llm.gguf and prompt layout)")
    ap.add_argument("--shape", choices=("tiny", "small"), help="write a Q4_K_M GGUF at this make-tiny shape instead")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1: a shared host)")
    ap.add_argument("--frames", type=int, default=10, help="timed prefills per setting")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        g, lj, rp, mm, th, fr, ne = a.child
        print(json.dumps(child(g, lj, rp == "1", mm == "1", int(th), int(fr), int(ne))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if a.bundle:
            from runtime.pipeline.bundle import load_bundle

            b = load_bundle(a.bundle)
            if b.manifest.llm is None:
                sys.exit(f"{a.bundle}: no LLM in this bundle")
            gguf, layout, n_embd = b.path(b.manifest.llm), b.manifest.llm.layout.model_dump_json(), b.manifest.llm.n_embd
            what = f"{a.bundle} ({b.manifest.llm.quant})"
        elif a.shape:
            gguf, layout, n_embd = make_gguf(a.shape, Path(tmp))
            what = f"make-tiny --shape {a.shape} LLM, Q4_K_M"
        else:
            sys.exit("give --bundle or --shape")
        size = gguf.stat().st_size / 2**20
        print(f"{what}: GGUF {size:.0f} MiB, {n_embd} wide; {a.threads} llama.cpp thread(s), {a.frames} prefills each")
        print(f"{'repack':>6} {'mmap':>5} {'load s':>7} {'RSS MiB':>8} {'anon':>7} {'file':>7} {'prefill ms':>11} {'min ms':>8}")
        rows = []
        for repack, mmap in SETTINGS:
            cmd = [sys.executable, __file__, "--child", str(gguf), layout, str(int(repack)), str(int(mmap)), str(a.threads)]
            cmd += [str(a.frames), str(n_embd)]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{'on' if repack else 'off':>6} {'on' if mmap else 'off':>5} {r['load_s']:7.2f} {r['rss_mb']:8.0f} "
                f"{r['anon_mb']:7.0f} {r['file_mb']:7.0f} {r['prefill_ms']:11.1f} {r['prefill_min_ms']:8.1f}"
            )
        for mmap in (True, False):
            on, off = (next(r for r in rows if r["repack"] == rp and r["mmap"] == mmap) for rp in (True, False))
            print(
                f"repack on vs off (mmap {'on' if mmap else 'off'}): {on['rss_mb'] - off['rss_mb']:+.0f} MiB resident, "
                f"prefill {off['prefill_min_ms'] / on['prefill_min_ms']:.2f}x as fast (min), "
                f"{off['prefill_ms'] / on['prefill_ms']:.2f}x (median)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
