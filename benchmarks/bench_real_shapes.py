"""The whole pipeline at a make-tiny shape, measured from the outside: export, `agpt bench`, `agpt run`.

    python benchmarks/bench_real_shapes.py --shape small            # ~4 minutes on 2 cores, ~1.5 GB of disk
    python benchmarks/bench_real_shapes.py --shape real --work /big/disk   # ~19 GB of checkpoints + ~6 GB bundle

Steps, each a child process under /usr/bin/time -v (peak resident memory as the kernel counts it, wall time):

  1. agpt export make-tiny --shape S    random weights in the official formats (real: ImageBind-Huge .pth,
                                        Vicuna-7B v0 sharded fp16 .bin, vocab 32001, r=32 LoRA, AnomalyGPT delta)
  2. agpt export bundle --precision fp16 --quant Q4_K_M --product bottle
  3. the bundle's file sizes
  4. agpt bench --engine E: per-stage latency (first_token), load time, resident memory after load, peak
  5. agpt run (a synthetic camera, `frames` judged frames): time to READY (the sd_notify readiness the
     daemon sends once bundle, pack and camera are up, received on our own NOTIFY_SOCKET) and peak RSS

Nothing is asserted: the figures print (and --json writes them). Steps 1-2 are skipped when --work already
holds them (rerun the measurements without re-exporting).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"


def from_log(log: Path) -> dict | None:
    """The figures of an earlier run of a step, from its /usr/bin/time -v report (steps skipped on a rerun)."""
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not rss or not wall:
        return None
    secs = 0.0
    for part in wall.group(1).split(":"):
        secs = secs * 60 + float(part)
    return {"wall_s": round(secs, 1), "peak_rss_mb": round(int(rss.group(1)) / 1024), "rc": 0, "from_log": str(log)}


def timed(cmd: list[str], log: Path, env: dict | None = None, notify: str | None = None, timeout: float = 3600) -> dict:
    """Run cmd under /usr/bin/time -v; {'wall_s', 'peak_rss_mb', 'rc', 'ready_s'?}; output kept in log."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    sock = None
    if notify:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        sock.settimeout(0.2)
        env["NOTIFY_SOCKET"] = notify
    full = ([TIME, "-v"] if Path(TIME).exists() else []) + cmd
    t0 = time.perf_counter()
    ready = None
    with open(log, "w") as out:
        p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env)
        while p.poll() is None:
            if time.perf_counter() - t0 > timeout:
                p.kill()
                p.wait()
                raise SystemExit(f"{' '.join(cmd[:6])} ... still running after {timeout:.0f} s, killed; see {log}")
            if sock is not None:  # drained all along: the daemon's heartbeats would fill the queue and block it
                try:
                    if b"READY=1" in sock.recv(4096) and ready is None:
                        ready = time.perf_counter() - t0
                except TimeoutError:
                    pass
            else:
                time.sleep(0.2)
    wall = time.perf_counter() - t0
    if sock is not None:
        sock.close()
    text = log.read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    r = {"wall_s": round(wall, 1), "peak_rss_mb": round(int(m.group(1)) / 1024) if m else None, "rc": p.returncode}
    if notify:
        r["ready_s"] = None if ready is None else round(ready, 2)
    if p.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed (rc {p.returncode}), see {log}:\n{tail}")
    return r


def agpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", *args]


def sizes(bundle: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(bundle.iterdir()) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("tiny", "small", "real"), default="small")
    ap.add_argument("--work", type=Path, default=None, help="folder for checkpoints, bundle and logs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder")
    ap.add_argument("--engine", default="onnxruntime", help="as `agpt bench --engine` and backend.engine")
    ap.add_argument("--providers", default="CPUExecutionProvider")
    ap.add_argument("--frames", type=int, default=10, help="frames timed by agpt bench and judged by agpt run")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime and llama.cpp threads (1: a shared host)")
    ap.add_argument("--llm-gpu-layers", type=int, default=-1)
    ap.add_argument(
        "--repack", choices=("on", "off"), default=None, help="backend.llm_repack for the daemon (default: the config's)"
    )
    ap.add_argument("--mmap", choices=("on", "off"), default=None, help="backend.llm_mmap for the daemon (default: the config's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix=f"agpt-{a.shape}-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle, logs = work / "ckpt", work / "bundle", work / "logs"
    logs.mkdir(exist_ok=True)
    report: dict = {"shape": a.shape, "engine": a.engine, "threads": a.threads, "host_cores": os.cpu_count()}
    try:
        if not (ckpt / "anomalygpt_ckpt" / "pytorch_model.pt").is_file():
            print(f"1/5 make-tiny --shape {a.shape} -> {ckpt}", flush=True)
            report["make_tiny"] = timed(agpt("export", "make-tiny", "--shape", a.shape, str(ckpt)), logs / "make_tiny.log")
        else:
            report["make_tiny"] = from_log(logs / "make_tiny.log")
        if not (bundle / "bundle.json").is_file():
            print(f"2/5 export bundle (fp16, Q4_K_M) -> {bundle}", flush=True)
            cmd = agpt("export", "bundle", "--ckpt-dir", str(ckpt), "--out", str(bundle), "--precision", "fp16")
            report["export"] = timed([*cmd, "--quant", "Q4_K_M", "--product", "bottle"], logs / "export.log")
        else:
            report["export"] = from_log(logs / "export.log")
        report["bundle_mb"] = sizes(bundle)
        report["bundle_total_mb"] = round(sum(report["bundle_mb"].values()), 1)
        report["checkpoints_gb"] = round(sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / 2**30, 2)
        print("4/5 agpt bench", flush=True)
        th = str(a.threads)
        bench_json = logs / "bench.json"
        cmd = agpt("bench", "--bundle", str(bundle), "--frames", str(a.frames), "--cameras", "", "--modes", "first_token")
        cmd += ["--threads", th, "--llm-threads", th, "--blas-threads", "1", "--engine", a.engine, "--providers", a.providers]
        sh = " ".join(f"'{c}'" if not c or " " in c else c for c in cmd)
        r = timed(["sh", "-c", f"{sh} --json > {bench_json}"], logs / "bench.log")
        b = json.loads(bench_json.read_text())
        ft = b["ours"]["first_token"]
        report["bench"] = {
            **r,
            "load_s": b["engine"]["load_s"],
            "rss_after_load_mb": b["engine"]["rss_after_load_mb"],
            "graphs": b["engine"]["graphs"],
            "stages_median_ms": {k: round(v["median_ms"], 1) for k, v in ft["stages"].items()},
            "fps": round(ft["fps"], 2),
        }
        print("5/5 agpt run", flush=True)
        cfg = {
            "bundle": str(bundle),
            "product": "bottle",
            "camera": {"kind": "synthetic", "source": "procedural", "when_full": "wait"},
            "publish": "tcp://127.0.0.1:*",
            "control": "tcp://127.0.0.1:*",
            "frames": a.frames,
            "log_level": "INFO",
            "backend": {
                "engine": a.engine,
                "providers": a.providers if a.providers == "auto" else a.providers.split(","),
                "intra_op_threads": a.threads,
                "llm_threads": a.threads,
                "blas_threads": 1,
                "llm_gpu_layers": a.llm_gpu_layers,
                **({"llm_repack": a.repack == "on"} if a.repack else {}),
                **({"llm_mmap": a.mmap == "on"} if a.mmap else {}),
            },
        }
        (work / "line.json").write_text(json.dumps(cfg, indent=2))
        sock = str(work / "notify.sock")
        Path(sock).unlink(missing_ok=True)
        report["daemon"] = timed(agpt("run", "--config", str(work / "line.json")), logs / "run.log", notify=sock, timeout=1800)
        Path(sock).unlink(missing_ok=True)
    finally:
        if a.work is None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif a.work is None:
            print(f"kept {work}")
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
