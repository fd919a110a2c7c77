"""`agpt eval` vs the running daemon on the same frames: same verdicts, same scores, same AUROC.

    python benchmarks/eval_through_daemon.py --bundle models/lite [--data ../shared/datasets] [--category cookie] [--shots 4]

Draw 1 of `agpt eval` picks the shots; the same pack is saved into the bundle, the test images are served
to the daemon as a folder camera (in eval's order), and a subscriber collects every result over ZeroMQ.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from runtime.line.config import parse_config
from runtime.line.control import request
from runtime.line.daemon import Daemon
from runtime.pipeline.inspector import Inspector
from runtime.pipeline.products import build_pack
from runtime.pipeline.store import ProductStore
from runtime.tools.eval_data import category_root
from runtime.tools.eval_metrics import auroc
from runtime.tools.evaluate import evaluate
from runtime.tools.subscribe import ResultMessage, ResultSubscriber, StatusMessage


def compare(bundle: Path, data: Path, category: str, shots: int, max_images: int | None = None) -> dict:
    insp = Inspector.from_config(bundle)
    ev = evaluate(
        bundle, data, category, shots=shots, draws=1, seed=0, max_images=max_images, inspector=insp, progress=lambda *_: None
    )
    draw = ev["draw_results"][0]
    root = category_root(data, category)
    pack = build_pack(insp, category, "", [root / s for s in draw["shots"]])
    ProductStore(bundle / "products", insp.pack_spec, dict(insp.manifest_products)).save(pack, replace=True)
    frames = draw["frames"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for i, f in enumerate(frames):  # the folder camera reads in name order: keep eval's order
            (folder / f"{i:05d}.png").symlink_to(root / f["file"])
        cfg = parse_config(
            {
                "bundle": str(bundle),
                "product": category,
                "start_paused": True,
                "frames": len(frames),
                "camera": {"kind": "folder", "source": str(folder), "when_full": "wait"},
                "publish": "tcp://127.0.0.1:*",
                "control": "tcp://127.0.0.1:*",
                "topic_prefix": "eval.daemon",
            }
        )
        daemon = Daemon(cfg, inspector=insp)
        daemon.start()
        got: dict[int, object] = {}
        with ResultSubscriber(daemon.publish_endpoint, ["eval.daemon."]) as sub:
            t = threading.Thread(target=lambda: (daemon.wait(), daemon.shutdown()), daemon=True)
            t.start()
            resumed = False
            while True:
                msg = sub.recv(30)
                if msg is None:
                    break
                if isinstance(msg, StatusMessage):
                    if not resumed:
                        request(daemon.control_endpoint, {"cmd": "resume"})
                        resumed = True
                    if msg.status.final:
                        break
                elif isinstance(msg, ResultMessage):
                    got[msg.header.frame_id] = msg.header
            t.join()
    heads = [got.get(i + 1) for i in range(len(frames))]
    labels = np.array([f["defect"] != "good" for f in frames])
    d_scores = np.array([h.score if h else np.nan for h in heads])
    e_scores = np.array([f["score"] for f in frames])
    d_verdicts = [h.verdict if h else None for h in heads]
    return {
        "frames": len(frames),
        "received": sum(h is not None for h in heads),
        "same_verdict": sum(dv == f["verdict"] for dv, f in zip(d_verdicts, frames)),
        "max_score_diff": float(np.nanmax(np.abs(d_scores - e_scores))),
        "eval": {"image_auroc": draw["image_auroc"], "accuracy": draw["accuracy"]},
        "daemon": {
            "image_auroc": auroc(d_scores, labels),
            "accuracy": float(np.mean([v is not None and v == y for v, y in zip(d_verdicts, labels)])),
        },
        "shots": draw["shots"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--category", default="cookie")
    ap.add_argument("--shots", type=int, default=4)
    args = ap.parse_args()
    print(json.dumps(compare(args.bundle, args.data, args.category, args.shots), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
