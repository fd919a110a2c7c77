"""Golden checks: a pack's golden images are judged at start and before a changeover's first line frame;
`golden: refuse` keeps the old pack (the refused pack never judges a line frame), `warn` lets it run."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from _daemon_fakes import TOPICS, CountingSource, FakeInspector, collect, connected, ctl, daemon_config, final_seen

from runtime.errors import AgptError
from runtime.line.daemon import Daemon
from runtime.pipeline.packfile import read_pack
from runtime.pipeline.products import GoldenImage, build_pack
from runtime.pipeline.store import ProductStore
from runtime.tools.subscribe import ResultSubscriber


def _png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((32, 32, 3), value, np.uint8))
    return buf.tobytes()


DARK, BRIGHT = _png(40), _png(220)  # the fake judges brightness: dark = good, bright = anomalous


@pytest.fixture
def bundle(tmp_path) -> Path:
    insp = FakeInspector()
    store = ProductStore(tmp_path / "products", insp.pack_spec)
    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 120, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    golden_ok = [GoldenImage("good.png", False, DARK), GoldenImage("bad.png", True, BRIGHT)]
    golden_wrong = [GoldenImage("good.png", False, DARK), GoldenImage("bad-but-dark.png", True, DARK)]
    store.save(build_pack(insp, "widget", "a widget", shots))
    store.save(build_pack(insp, "checked", "checked", shots[:1], golden=golden_ok))
    store.save(build_pack(insp, "misjudged", "misjudged", shots[:1], golden=golden_wrong))
    return tmp_path


def test_golden_images_round_trip_in_the_pack(bundle):
    pack = read_pack(bundle / "products" / "misjudged" / "pack.npz")
    assert [(g.name, g.label) for g in pack.golden] == [("good.png", "good"), ("bad-but-dark.png", "bad")]
    assert pack.golden[1].data == DARK and pack.meta["schema"] == 2 and len(pack.shots) == 1


def _run_swap(bundle, mode: str, product: str):
    cfg = daemon_config(bundle, sndhwm=1000, golden=mode)
    gate = threading.Event()
    insp = FakeInspector()
    d = Daemon(cfg, inspector=insp, source=CountingSource(gate=gate, period=0.002))
    d.start()
    old = d.pack.bank_id
    with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
        try:
            connected(sub)
            gate.set()
            first = collect(sub, lambda b: len(b["results"]) >= 20)
            reply = ctl(d, {"cmd": "swap_bank", "product": product})
            boundary = d.lanes[0].last_frame_id
            later = collect(sub, lambda b: any(r.header.frame_id > boundary + 10 for r in b["results"]))
            status = ctl(d, {"cmd": "status"})["data"]
        finally:
            d.shutdown()
        bag = collect(sub, final_seen)
    results = [m.header for m in first["results"] + later["results"] + bag["results"]]
    events = first["events"] + later["events"] + bag["events"]
    return d, insp, old, reply, results, events, status


def test_refuse_keeps_the_old_pack_and_the_refused_pack_never_judges_a_line_frame(bundle):
    refused_id = read_pack(bundle / "products" / "misjudged" / "pack.npz").bank_id
    d, insp, old, reply, results, events, status = _run_swap(bundle, "refuse", "misjudged")
    assert not reply["ok"] and "golden" in reply["error"] and "bad-but-dark.png" in reply["error"]
    ids = [h.frame_id for h in results]
    assert ids == list(range(1, len(ids) + 1))  # the line went on, no frame lost
    assert {h.bank_id for h in results} == {old} and {h.product for h in results} == {"widget"}
    assert insp.banks_seen.count(refused_id) == 2  # its two golden images, and not one line frame
    checks = [e for e in events if e.kind == "golden_check"]
    assert len(checks) == 1 and checks[0].detail["action"] == "refused" and not checks[0].detail["ok"]
    imgs = {i["name"]: i for i in checks[0].detail["images"]}
    assert imgs["good.png"]["ok"] and imgs["good.png"]["verdict"] is False
    assert not imgs["bad-but-dark.png"]["ok"] and imgs["bad-but-dark.png"]["verdict"] is False
    assert all("score" in i and "p_anomaly" in i for i in imgs.values())
    assert any(e.kind == "swap_failed" and e.detail.get("golden") for e in events)
    assert status["golden"]["action"] == "refused" and status["cameras"][0]["golden"]["product"] == "misjudged"
    assert status["product"] == "widget"


def test_warn_runs_the_pack_and_says_so(bundle):
    d, insp, old, reply, results, events, status = _run_swap(bundle, "warn", "misjudged")
    assert reply["ok"] and reply["data"]["golden"] == {"ok": False, "action": "warned"}
    new_id = reply["data"]["bank_id"]
    boundary = reply["data"]["after_frame_id"]
    assert all(h.bank_id == (old if h.frame_id <= boundary else new_id) for h in results)
    check = next(e for e in events if e.kind == "golden_check")
    assert check.detail["action"] == "warned" and check.detail["bank_id"] == new_id
    # the check ran before the first line frame of the new pack: its golden images are the first judged with it
    first_new = insp.banks_seen.index(new_id)
    assert insp.banks_seen[first_new : first_new + 2] == [new_id, new_id] and status["golden"]["action"] == "warned"


def test_a_pack_whose_golden_images_pass_swaps_in(bundle):
    d, insp, old, reply, results, events, status = _run_swap(bundle, "refuse", "checked")
    assert reply["ok"] and reply["data"]["golden"] == {"ok": True, "action": "passed"}
    assert results[-1].product == "checked" and status["golden"]["ok"]


def test_golden_check_at_start(bundle):
    with pytest.raises(AgptError, match="golden.*does not start"):
        Daemon(daemon_config(bundle, product="misjudged", golden="refuse"), inspector=FakeInspector()).start()
    d = Daemon(daemon_config(bundle, product="misjudged", golden="warn"), inspector=FakeInspector(),
               source=CountingSource(n=3))  # fmt: skip
    d.start()
    try:
        st = d.status()
        assert st.golden is not None and st.golden.when == "start" and st.golden.action == "warned"
        assert [i.ok for i in st.golden.images] == [True, False]
    finally:
        d.shutdown()
