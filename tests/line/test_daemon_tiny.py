"""The daemon with the real Inspector on the tiny bundle: `agpt bank build`, `agpt run --config`, a
subscriber, a live add_product + changeover, and an operator question answered by the LLM.
(The fault and fuzz tests use a fake inspector: tests/line/test_daemon.py.)"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from _daemon_fakes import collect, final_seen

from runtime.cli import main as agpt
from runtime.line.config import load_config
from runtime.line.control import request
from runtime.line.daemon import Daemon
from runtime.tools.subscribe import ResultSubscriber


def _images(folder: Path, n: int, seed: int, cookie: Path | None, split: str) -> Path:
    """n images: the cookie set's when present, else smooth random pictures (camera-sized, not square)."""
    import cv2

    folder.mkdir(parents=True)
    if cookie is not None:
        for p in sorted((cookie / split / "good").glob("*.png"))[:n]:
            shutil.copy(p, folder / p.name)
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture
def cookie_or_none():
    root = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cookie"
    return root if root.is_dir() else None


def test_daemon_on_the_tiny_bundle(tiny_bundle, tmp_path, cookie_or_none, capsys):
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)  # packs get written into it
    _images(tmp_path / "frames", 6, 1, cookie_or_none, "test")
    shots = _images(tmp_path / "shots", 2, 2, cookie_or_none, "train")

    # offline pack, as a line engineer would build it
    assert (
        agpt(["bank", "build", "--bundle", str(bundle), "--product", "cookie_fs", "--description", "a cookie", str(shots)]) == 0
    )
    assert "bank_id" in capsys.readouterr().out

    cfg_file = tmp_path / "line.yaml"
    cfg_file.write_text(
        "bundle: tiny\nproduct: cookie\npublish: tcp://127.0.0.1:*\ncontrol: tcp://127.0.0.1:*\nlog_level: WARNING\n"
        "shots_root: shots\nheartbeat_s: 0.2\ncamera: {kind: folder, source: frames, loop: true, when_full: wait}\n"
    )
    cfg = load_config(cfg_file)
    d = Daemon(cfg)
    d.start()
    try:
        assert d.pack.name == "cookie" and d.pack.bank == [] and d.pack.text_feats is not None  # bundle.json product
        with ResultSubscriber(d.publish_endpoint, ["line1.station1."]) as sub:
            first = collect(sub, lambda b: len(b["results"]) >= 3, timeout=60)
            h = first["results"][0].header
            assert h.product == "cookie" and h.judge == "llm-first_token" and 0.0 <= h.p_anomaly <= 1.0
            assert {"encoder", "map", "prompt", "llm", "total"} <= set(h.latency_ms)
            assert first["results"][0].mask.shape == (224, 224)
            assert h.mask.frame_transform is not None and h.mask.frame_transform.size == 224

            r = request(d.control_endpoint, {"cmd": "swap_bank", "product": "cookie_fs"}, 60)
            assert r["ok"], r
            fs_bank = r["data"]["bank_id"]
            r = request(d.control_endpoint, {"cmd": "add_product", "name": "cookie_live", "description": "a cookie",
                                             "shots": sorted(p.name for p in shots.iterdir()), "activate": True}, 120)  # fmt: skip
            assert r["ok"], r
            live_bank = r["data"]["bank_id"]
            assert live_bank == fs_bank  # same shots, same description: the same content id, on- or off-line
            a = request(d.control_endpoint, {"cmd": "ask", "question": "Where is the anomaly?"}, 120)
            assert a["ok"] and isinstance(a["data"]["answer"], str), a
            bag = collect(sub, lambda b: any(m.header.product == "cookie_live" for m in b["results"]), timeout=60)
            ids = [m.header.frame_id for m in first["results"] + bag["results"]]
            assert ids == list(range(1, len(ids) + 1))
            stopper = threading.Thread(target=d.shutdown)
            stopper.start()
            end = collect(sub, final_seen, timeout=30)
            stopper.join()
        assert next(s for s in end["statuses"] if s.final).product == "cookie_live"
    finally:
        d.shutdown()
