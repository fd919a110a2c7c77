"""Operator feedback on a running daemon (lite bundle, real cookie images): a false reject added to the bank
rebuilds the pack off the loop and swaps it in between two frames; the same frame is then judged normal,
with a new bank id and no frame lost; rollback brings the old bank id back. Every mark is logged."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from _daemon_fakes import TOPICS, collect, connected, ctl, daemon_config, final_seen

from runtime.pipeline.engines.config import BackendConfig
from runtime.pipeline.packfile import read_pack
from runtime.pipeline.preprocess import decode_image, load_image
from runtime.pipeline.products import PackSpec, build_pack
from runtime.pipeline.store import ProductStore

STRICT = {"rule": "score", "threshold": 0.30}  # a strict operating point: test/good/000.png (0.336) is rejected


class RepeatSource:
    """The given frames over and over (held until `gate` is set): frame_id 1, 3, 5 ... is images[0]."""

    def __init__(self, images: list[np.ndarray], gate: threading.Event):
        self.images, self.gate, self.i, self.eof = images, gate, 0, False

    def open(self) -> None:
        pass

    def read(self):
        while not self.gate.wait(0.05):
            pass
        img = self.images[self.i % len(self.images)]
        self.i += 1
        time.sleep(0.005)
        return True, img, None

    def close(self) -> None:
        pass


@pytest.fixture
def station(tmp_path, lite_bundle, cookie):
    """A copy of the lite bundle (its products/ is this test's own) with a 1-shot cookie pack."""
    from runtime.pipeline.bundle import load_bundle
    from runtime.pipeline.inspector import Inspector

    bundle = tmp_path / "lite"
    shutil.copytree(lite_bundle, bundle, ignore=shutil.ignore_patterns("products"))
    insp = Inspector(load_bundle(bundle), BackendConfig(intra_op_threads=1))
    store = ProductStore(bundle / "products", PackSpec.from_bundle(insp.bundle))
    pack = build_pack(insp, "cookie", "", [cookie / "train" / "good" / "000.png"], operating_point=STRICT)
    store.save(pack)
    return bundle, insp, store, pack


def _until_bank(sub, bank_id: str, n: int) -> dict:
    return collect(sub, lambda b: sum(r.header.bank_id == bank_id for r in b["results"]) >= n, timeout=60)


@pytest.mark.slow
def test_false_reject_added_to_the_bank_is_judged_normal_then_rollback(station, cookie):
    from runtime.line.daemon import Daemon
    from runtime.tools.subscribe import ResultSubscriber

    bundle, insp, store, pack = station
    reject, other = load_image(cookie / "test" / "good" / "000.png"), load_image(cookie / "test" / "good" / "001.png")
    gate = threading.Event()
    cfg = daemon_config(bundle, product="cookie", sndhwm=10000, backend=BackendConfig(intra_op_threads=1))
    d = Daemon(cfg, inspector=insp, source=RepeatSource([reject, other], gate))
    d.start()
    bags = []
    with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
        try:
            connected(sub)
            gate.set()
            bags.append(collect(sub, lambda b: any(r.header.verdict for r in b["results"]), timeout=60))
            marked = next(r.header for r in bags[0]["results"] if r.header.verdict)
            assert marked.frame_id % 2 == 1 and marked.judge == "operating-point" and marked.bank_id == pack.bank_id
            fb = ctl(d, {"cmd": "feedback", "frame_id": marked.frame_id, "kind": "false_reject", "operator": "alice",
                         "add_to_bank": True, "note": "cookie is fine"}, timeout_s=60)  # fmt: skip
            assert fb["ok"], fb
            new_id = fb["data"]["new_bank_id"]
            assert new_id != pack.bank_id and fb["data"]["previous_bank_id"] == pack.bank_id and fb["data"]["n_shots"] == 2
            bags.append(_until_bank(sub, new_id, 6))
            rb = ctl(d, {"cmd": "rollback", "product": "cookie", "operator": "bob"}, timeout_s=60)
            assert rb["ok"] and rb["data"]["bank_id"] == pack.bank_id and rb["data"]["previous_bank_id"] == new_id, rb
            bags.append(_until_bank(sub, pack.bank_id, 1))
            boundary = rb["data"]["changeover"]["after_frame_id"]
            bags.append(collect(sub, lambda b: any(r.header.frame_id > boundary + 4 for r in b["results"]), timeout=60))
        finally:
            d.shutdown()
        bags.append(collect(sub, final_seen))
    results = [r.header for b in bags for r in b["results"]]
    events = [e for b in bags for e in b["events"]]
    ids = [h.frame_id for h in results]
    assert ids == list(range(1, len(ids) + 1))  # no frame lost across either swap
    assert all(h.drops.queue == h.drops.failed == 0 for h in results)
    swap = fb["data"]["changeover"]["after_frame_id"]
    same = [h for h in results if h.frame_id % 2 == 1]  # the marked image, judged again and again
    assert all(h.verdict for h in same if h.frame_id <= swap)  # rejected with the old pack ...
    with_new = [h for h in same if swap < h.frame_id <= boundary]
    assert with_new and all(h.bank_id == new_id and h.verdict is False for h in with_new)  # ... normal with the new one
    assert all(h.bank_id == pack.bank_id and h.verdict for h in same if h.frame_id > boundary)  # rolled back
    kinds = [e.kind for e in events]
    assert {"feedback", "bank_rebuilt", "rollback", "changeover"} <= set(kinds)
    # the log beside the pack: who marked what, on which bank
    log = [json.loads(line) for line in (bundle / "products" / "cookie" / "feedback.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log] == ["false_reject", "rollback"]
    assert log[0]["frame_id"] == marked.frame_id and log[0]["operator"] == "alice" and log[0]["bank_id"] == pack.bank_id
    assert log[0]["new_bank_id"] == new_id and log[0]["camera"] == "cam0" and log[1]["operator"] == "bob"
    # the rebuilt pack kept the frame itself as its second shot (lossless), and it is in history now
    rebuilt = [p for p in store.history("cookie") if p.stem.endswith(new_id)]
    assert len(rebuilt) == 1
    kept = read_pack(rebuilt[0])
    assert kept.n_shots == 2 and np.array_equal(decode_image(kept.shots[1]), reject)
    assert kept.operating_point["threshold"] == STRICT["threshold"]
    assert store.load("cookie").bank_id == pack.bank_id


def test_feedback_refusals(station):
    from runtime.line.daemon import Daemon

    bundle, insp, store, pack = station
    gate = threading.Event()
    d = Daemon(
        daemon_config(bundle, product="cookie"), inspector=insp, source=RepeatSource([np.zeros((64, 64, 3), np.uint8)], gate)
    )
    d.start()
    try:
        r = ctl(d, {"cmd": "feedback", "frame_id": 5, "kind": "missed_defect", "operator": "x", "add_to_bank": True})
        assert not r["ok"] and "only a false reject" in r["error"]
        r = ctl(d, {"cmd": "feedback", "frame_id": 99, "kind": "false_reject", "operator": "x"})
        assert not r["ok"] and "not kept" in r["error"]
        r = ctl(d, {"cmd": "rollback", "product": "cookie"})
        assert not r["ok"] and "no previous version" in r["error"]
        r = ctl(d, {"cmd": "feedback", "frame_id": 1, "kind": "nonsense", "operator": "x"})
        assert not r["ok"] and "kind" in r["error"]
    finally:
        gate.set()
        d.shutdown()
