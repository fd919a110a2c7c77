"""Several cameras in one daemon (`cameras:` in the config): one capture thread per camera, one judge_batch
per round, every camera with its own frame ids, product and pack. Fake inspector (no model) except the
last test, which runs the real Inspector on the tiny bundle. Each test is bounded in time (seconds)."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from _daemon_fakes import (
    TOPICS,
    CountingSource,
    FakeInspector,
    FlakySource,
    collect,
    connected,
    ctl,
    daemon_config,
    final_seen,
    make_bundle,
    multi_config,
    run_to_end,
    running,
)

from runtime.errors import AgptError
from runtime.line.config import CameraConfig, load_config, parse_config
from runtime.line.control import request
from runtime.line.daemon import Daemon
from runtime.pipeline.products import build_pack
from runtime.pipeline.store import ProductStore
from runtime.tools.subscribe import ResultSubscriber

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path) -> Path:
    """widget and gadget (from make_bundle) and a third product, bolt."""
    root = make_bundle(tmp_path / "bundle")
    insp = FakeInspector()
    shots = [np.random.default_rng(5).integers(60, 90, (32, 32, 3), dtype=np.uint8)]
    ProductStore(root / "products", insp.pack_spec).save(build_pack(insp, "bolt", "a bolt", shots))
    return root


def by_camera(results) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in results:
        out.setdefault(m.header.camera, []).append(m.header)
    return out


def banks(bundle: Path) -> dict[str, str]:
    store = ProductStore(bundle / "products", FakeInspector().pack_spec)
    return {n: store.load(n).bank_id for n in ("widget", "gadget", "bolt")}


class SpecialSource(CountingSource):
    """CountingSource whose frame k (1-based) is filled with special[k] instead (a frame the model fails on)."""

    def __init__(self, special: dict[int, int], **kw):
        super().__init__(**kw)
        self.special = special

    def read(self):
        ok, img, truth = super().read()
        if ok and self.i in self.special:
            img = np.full_like(img, self.special[self.i])
        return ok, img, truth


# ---- every camera judged, with its own ids and product ---------------------------------------------------


def test_three_cameras_every_frame_judged_with_its_own_product(bundle):
    cfg = multi_config(bundle, [{"name": "a"}, {"name": "b", "product": "gadget"}, {"name": "c", "product": "bolt"}], sndhwm=1000)
    n = {"a": 40, "b": 50, "c": 60}  # streams of different lengths: the ended ones do not hold up the rest
    insp = FakeInspector(delay=0.002)
    d, bag = run_to_end(cfg, insp, sources={k: CountingSource(n=v) for k, v in n.items()})
    assert d.stop_reason == "camera_end"
    ids = {cam: [h.frame_id for h in hs] for cam, hs in by_camera(bag["results"]).items()}
    assert ids == {cam: list(range(1, k + 1)) for cam, k in n.items()}
    bank = banks(bundle)
    for cam, product in (("a", "widget"), ("b", "gadget"), ("c", "bolt")):
        hs = by_camera(bag["results"])[cam]
        assert {(h.product, h.bank_id) for h in hs} == {(product, bank[product])}
        assert all(
            h.drops.model_dump() == {"queue": 0, "camera_bad": 0, "paused": 0, "failed": 0, "publish": 0, "untriggered": 0}
            for h in hs
        )
    assert max(insp.batch_sizes) > 1 and max(insp.batch_sizes) <= 3  # batched, one frame per camera at most
    assert max(m.header.batch for m in bag["results"]) > 1
    final = next(s for s in bag["statuses"] if s.final)
    assert final.frames_judged == sum(n.values()) and final.frames_captured == sum(n.values())
    assert [(c.name, c.product, c.frames_judged, c.frames_captured, c.camera_state) for c in final.cameras] == [
        ("a", "widget", 40, 40, "ended"), ("b", "gadget", 50, 50, "ended"), ("c", "bolt", 60, 60, "ended")]  # fmt: skip
    assert final.truth_frames == sum(n.values()) and final.accuracy == 1.0
    assert [c.bank_id for c in final.cameras] == [bank["widget"], bank["gadget"], bank["bolt"]]
    assert sum(e.kind == "camera_end" for e in bag["events"]) == 3


def test_one_camera_list_is_the_one_camera_daemon(bundle):
    """`cameras:` with a single entry runs the one-frame loop (judge, not judge_batch)."""
    cfg = multi_config(bundle, [{"name": "solo", "product": "gadget"}], sndhwm=1000)
    insp = FakeInspector()
    d, bag = run_to_end(cfg, insp, sources={"solo": CountingSource(n=15)})
    assert [m.header.frame_id for m in bag["results"]] == list(range(1, 16))
    assert {m.header.product for m in bag["results"]} == {"gadget"} and insp.batch_sizes == []
    assert not d.multi and d.max_batch == 1  # one camera: one frame at a time, through the same loop


# ---- changeovers ----------------------------------------------------------------------------------------


def test_swap_for_one_camera_leaves_the_others(bundle):
    cams = [{"name": "a"}, {"name": "b"}, {"name": "c", "product": "bolt"}]
    cfg = multi_config(bundle, cams, sndhwm=10000)
    bank = banks(bundle)
    gate = threading.Event()  # no frame before the subscription is live: the first frame ids must not be missed
    sources = {k: CountingSource(period=0.002, gate=gate) for k in "abc"}
    d = Daemon(cfg, inspector=FakeInspector(), sources=sources)
    d.start()
    try:
        with ResultSubscriber(d.publish_endpoint, TOPICS, rcvhwm=100000) as sub:
            connected(sub)
            gate.set()
            first = collect(sub, lambda b: len(b["results"]) >= 30)
            bad = ctl(d, {"cmd": "swap_bank", "product": "gadget", "camera": "zz"})
            assert not bad["ok"] and "no camera 'zz'" in bad["error"]
            one = ctl(d, {"cmd": "swap_bank", "product": "gadget", "camera": "b", "id": 1})
            assert one["ok"], one
            assert set(one["data"]["cameras"]) == {"b"} and one["data"]["previous"] == {
                "product": "widget",
                "bank_id": bank["widget"],
            }
            mid = collect(sub, lambda b: len(b["results"]) >= 60)
            st = ctl(d, {"cmd": "status"})["data"]
            assert [(c["name"], c["product"]) for c in st["cameras"]] == [("a", "widget"), ("b", "gadget"), ("c", "bolt")]
            lp = ctl(d, {"cmd": "list_products"})["data"]
            assert lp["cameras"]["b"] == {"product": "gadget", "bank_id": bank["gadget"]}
            a = ctl(d, {"cmd": "ask", "question": "which camera?", "camera": "c"})
            assert a["ok"] and a["data"]["camera"] == "c" and a["data"]["product"] == "bolt"
            fid = a["data"]["frame_id"]
            a2 = ctl(d, {"cmd": "ask", "question": "again", "camera": "c", "frame_id": fid})
            assert a2["ok"] and a2["data"]["frame_id"] == fid and a2["data"]["camera"] == "c"
            every = ctl(d, {"cmd": "swap_bank", "product": "bolt"})  # no camera: all of them
            assert every["ok"] and set(every["data"]["cameras"]) == {"a", "b", "c"}
            after = collect(sub, lambda b: sum(m.header.camera == "a" and m.header.product == "bolt" for m in b["results"]) >= 5)
            stopper = threading.Thread(target=d.shutdown)
            stopper.start()
            end = collect(sub, final_seen)
            stopper.join()
    finally:
        d.shutdown()
    bags = (first, mid, after, end)
    results = by_camera([m for b in bags for m in b["results"]])
    b_at = one["data"]["cameras"]["b"]["after_frame_id"]
    all_at = {k: v["after_frame_id"] for k, v in every["data"]["cameras"].items()}
    for cam, hs in results.items():
        assert [h.frame_id for h in hs] == list(range(1, len(hs) + 1)), cam  # zero gaps across both swaps
        for h in hs:
            if h.frame_id > all_at[cam]:
                want = "bolt"
            elif cam == "b" and h.frame_id > b_at:
                want = "gadget"
            else:
                want = {"a": "widget", "b": "widget", "c": "bolt"}[cam]
            assert (h.product, h.bank_id) == (want, bank[want]), (cam, h.frame_id)
    assert any(h.product == "gadget" for h in results["b"]) and all(h.product != "gadget" for h in results["a"] + results["c"])
    changeovers = [e.detail for b in bags for e in b["events"] if e.kind == "changeover"]
    assert sorted(e["camera"] for e in changeovers) == ["a", "b", "b", "c"]
    active = json.loads((bundle / "products" / ".active.json").read_text())
    assert {k: (v["product"], v["base"]) for k, v in active["cameras"].items()} == {
        "a": ("bolt", "widget"), "b": ("bolt", "widget"), "c": ("bolt", "bolt")}  # fmt: skip

    # a restart resumes each camera's last committed product, unless the config's product for it was edited
    edited = multi_config(bundle, [{"name": "a", "product": "gadget"}, {"name": "b"}, {"name": "c", "product": "bolt"}])
    with running(edited, sources={k: CountingSource(period=0.005) for k in "abc"}) as d2:
        assert [lane.pack.name for lane in d2.lanes] == ["gadget", "bolt", "bolt"]
        r = ctl(d2, {"cmd": "swap_bank", "product": "widget", "camera": "c"})
        assert r["ok"]
    with running(edited, sources={k: CountingSource(period=0.005) for k in "abc"}) as d3:
        assert [lane.pack.name for lane in d3.lanes] == ["gadget", "bolt", "widget"]


# ---- faults stay with their camera ---------------------------------------------------------------------


def test_a_dead_camera_does_not_stall_the_others(bundle):
    cams = [{"name": "a", "reopen_backoff_s": 0.01, "reopen_backoff_max_s": 0.05}, {"name": "b"}]
    cfg = multi_config(bundle, cams, sndhwm=10000)
    flaky = FlakySource()
    with running(cfg, FakeInspector(), sources={"a": flaky, "b": CountingSource(period=0.002)}) as d, \
            ResultSubscriber(d.publish_endpoint, TOPICS, rcvhwm=100000) as sub:  # fmt: skip
        collect(sub, lambda b: {"a", "b"} <= {m.header.camera for m in b["results"]})
        flaky.down.set()
        lost = collect(sub, lambda b: any(e.kind == "camera_lost" for e in b["events"]))
        assert next(e for e in lost["events"] if e.kind == "camera_lost").detail["camera"] == "a"
        a_captured = d.lanes[0].camera.frame_id  # final until a is back: its reads fail (was: a 50 ms sleep)
        b_meanwhile = collect(sub, lambda b: sum(m.header.camera == "b" for m in b["results"]) >= 40)
        a_meanwhile = [m.header.frame_id for m in b_meanwhile["results"] if m.header.camera == "a"]
        assert all(i <= a_captured for i in a_meanwhile)  # frames captured before the loss only: a is down, b goes on
        st = ctl(d, {"cmd": "status"})["data"]
        assert {c["name"]: c["camera_state"] for c in st["cameras"]} == {"a": "lost", "b": "open"}
        flaky.down.clear()
        back = collect(sub, lambda b: any(e.kind == "camera_back" for e in b["events"])
                       and sum(m.header.camera == "a" for m in b["results"]) >= 5)  # fmt: skip
        a_ids = [m.header.frame_id for m in back["results"] if m.header.camera == "a"]
        assert a_ids == sorted(set(a_ids)) and d.lanes[0].camera.reopens == 1 and d._loop_thread.is_alive()


class PreparingInspector(FakeInspector):
    """Has Inspector.prepare (run on the camera threads); preprocessing fails on pixel value 9."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.prepared_on: set[str] = set()

    def prepare(self, frame):
        self.prepared_on.add(threading.current_thread().name)
        if int(frame[0, 0, 0]) == 9:
            raise ValueError("fake preprocessing failure")
        return frame


def test_a_bad_frame_fails_only_its_own_camera(bundle):
    cfg = multi_config(bundle, [{"name": "a"}, {"name": "b"}, {"name": "c"}], sndhwm=1000)
    insp = PreparingInspector(fail_frames={7}, delay=0.001)
    sources = {"a": SpecialSource({5: 7}, n=20), "b": SpecialSource({8: 9}, n=20), "c": CountingSource(n=20)}
    d, bag = run_to_end(cfg, insp, sources=sources)
    ids = {cam: [h.frame_id for h in hs] for cam, hs in by_camera(bag["results"]).items()}
    assert ids == {"a": [i for i in range(1, 21) if i != 5], "b": [i for i in range(1, 21) if i != 8], "c": list(range(1, 21))}
    errs = sorted((e.detail["camera"], e.detail["frame_id"]) for e in bag["events"] if e.kind == "judge_error")
    assert errs == [("a", 5), ("b", 8)]
    final = next(s for s in bag["statuses"] if s.final)
    assert {c.name: c.drops.failed for c in final.cameras} == {"a": 1, "b": 1, "c": 0}
    assert final.drops.failed == 2 and final.errors == 2 and final.frames_judged == 58
    assert d.batch_retries >= 1  # a's frame 5 failed its batch: the others in it were judged again alone
    # a header's drops are its own camera's: every frame_id gap of that camera is explained
    last = {cam: hs[-1] for cam, hs in by_camera(bag["results"]).items()}
    assert {cam: h.drops.failed for cam, h in last.items()} == {"a": 1, "b": 1, "c": 0}


def test_one_camera_prepares_on_its_thread(bundle):
    """The one-camera loop gets frames its capture thread already preprocessed; a frame whose preprocessing
    failed is that frame's judge_error, and the stream goes on."""
    cfg = multi_config(bundle, [{"name": "a"}], sndhwm=1000)
    insp = PreparingInspector(delay=0.001)
    d, bag = run_to_end(cfg, insp, sources={"a": SpecialSource({4: 9}, n=12)})
    assert not d.multi and [h.header.frame_id for h in bag["results"]] == [i for i in range(1, 13) if i != 4]
    assert [
        (e.detail["frame_id"], "fake preprocessing failure" in e.detail["error"])
        for e in bag["events"]
        if e.kind == "judge_error"
    ] == [(4, True)]
    assert insp.prepared_on and "inspect" not in insp.prepared_on  # never on the inspection loop's thread
    final = next(s for s in bag["statuses"] if s.final)
    assert final.drops.failed == 1 and final.frames_judged == 11


# ---- fairness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when_full", ["wait", "drop_oldest"])
def test_no_camera_starved(bundle, when_full):
    """Four equal-rate cameras, batches of at most two: the round robin serves them all alike."""
    cfg = multi_config(bundle, [{"name": f"c{k}", "when_full": when_full} for k in range(4)])
    insp = FakeInspector(delay=0.002, max_batch=2)
    period = 0.0 if when_full == "wait" else 0.001
    with running(cfg, insp, sources={f"c{k}": CountingSource(period=period) for k in range(4)}) as d:
        assert d.max_batch == 2
        deadline = time.monotonic() + 20
        while d.judged < 400:
            assert time.monotonic() < deadline, f"only {d.judged} frames judged"
            time.sleep(0.01)
    counts = [lane.judged for lane in d.lanes]
    assert min(counts) >= 0.9 * max(counts), counts
    assert max(insp.batch_sizes) == 2
    st = d.status(final=True)
    for c in st.cameras:  # every captured frame is judged, dropped (newest wins), waiting, or refused at the stop
        accounted = c.frames_judged + c.drops.queue + c.queue_depth
        assert c.frames_captured - 1 <= accounted <= c.frames_captured, c
        if when_full == "wait":
            assert c.drops.queue == 0


def test_config_max_batch_bounds_the_batch(bundle):
    cfg = multi_config(bundle, [{"name": f"c{k}"} for k in range(3)], max_batch=2)
    insp = FakeInspector(delay=0.002)
    with running(cfg, insp, sources={f"c{k}": CountingSource() for k in range(3)}) as d:
        assert d.max_batch == 2
        deadline = time.monotonic() + 20
        while d.judged < 90:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert max(insp.batch_sizes) == 2 and min(lane.judged for lane in d.lanes) >= 25


def test_frames_limit_is_exact_with_batches(bundle):
    """`frames: 4` with three cameras batching three at a time stops at 4 judged frames, not at 6."""
    cfg = multi_config(bundle, [{"name": f"c{k}"} for k in range(3)], frames=4)
    gate = threading.Event()
    sources = {f"c{k}": CountingSource(n=50) for k in range(3)}
    for src in sources.values():
        src.gate = gate
    insp = FakeInspector(delay=0.05)  # slow enough that every camera has its next frame ready each round
    d = Daemon(cfg, inspector=insp, sources=sources)
    d.start()
    try:
        assert ctl(d, {"cmd": "pause"})["ok"]  # wait sources hold their frames: the first round takes all three
        d.call_in_loop(lambda: None).result(5)  # the loop is past any take() that was waiting when the pause came
        gate.set()
        deadline = time.monotonic() + 10
        while not all(d.slots.full(k) for k in range(3)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ctl(d, {"cmd": "resume"})["ok"]
        assert d.wait(30)
    finally:
        d.shutdown()
    assert d.stop_reason == "frames" and d.judged == 4 and insp.batch_sizes[0] == 3


def test_pause_while_the_loop_waits_for_frames(bundle):
    """A pause that lands while the loop is already waiting for frames: what that wait returns is held, not
    judged, until the resume; nothing is lost or judged twice."""
    cfg = multi_config(bundle, [{"name": "a"}, {"name": "b"}], sndhwm=1000)
    gate = threading.Event()
    sources = {k: CountingSource(n=5, gate=gate) for k in "ab"}
    with running(cfg, FakeInspector(), sources=sources) as d:
        waiting, take = threading.Event(), d.slots.take

        def traced(*a, **kw):
            waiting.set()
            return take(*a, **kw)

        d.slots.take = traced
        assert waiting.wait(5)  # the loop is (re)entering take(): no camera has a frame yet (was: a 0.2 s sleep)
        assert ctl(d, {"cmd": "pause"})["ok"]
        gate.set()  # frames arrive while that take() may still be waiting
        deadline = time.monotonic() + 10
        while not all(d.slots.full(k) for k in range(2)):  # both cameras' next frames are waiting in their slots
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(3):  # three loop rounds while paused (was: a 0.4 s sleep)
            d.call_in_loop(lambda: None).result(5)
        assert d.judged == 0
        assert ctl(d, {"cmd": "resume"})["ok"]
        assert d.wait(10)
    assert d.judged == 10 and sorted((c.camera, c.frame_id) for c in d.kept) == [(k, i) for k in "ab" for i in range(1, 6)]


def test_pause_holds_wait_cameras_and_counts_live_ones(bundle):
    cfg = multi_config(bundle, [{"name": "file"}, {"name": "live", "when_full": "drop_oldest"}])
    with running(cfg, FakeInspector(), sources={"file": CountingSource(period=0.002), "live": CountingSource(period=0.002)}) as d:
        while d.judged < 10:
            time.sleep(0.01)
        assert ctl(d, {"cmd": "pause"})["ok"]
        d.call_in_loop(lambda: None).result(5)  # the batch in flight at the pause is done (was: a 0.1 s sleep)
        judged = d.judged
        lanes = {lane.name: lane for lane in d.lanes}
        deadline = time.monotonic() + 10
        while lanes["live"].paused_drops < 3:  # the live camera keeps delivering: counted, not judged
            assert time.monotonic() < deadline
            d.call_in_loop(lambda: None).result(5)
        assert d.judged == judged and lanes["file"].paused_drops == 0
        assert ctl(d, {"cmd": "resume"})["ok"]
        while d.judged < judged + 10:
            time.sleep(0.01)
    ids = [c.frame_id for c in d.kept if c.camera == "file"]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


# ---- configuration ------------------------------------------------------------------------------------


BASE = "bundle: b\nproduct: cookie\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (BASE, "exactly one of `camera`"),
        (BASE + "camera: {kind: folder, source: f}\ncameras: [{kind: folder, source: g}]\n", "exactly one of `camera`"),
        (BASE + "cameras: [{name: x, kind: folder, source: f}, {name: x, kind: folder, source: g}]\n", "unique (twice: x)"),
        (BASE + "cameras: []\n", "cameras"),
        (BASE + "camera: {kind: folder, source: f, product: other}\n", "camera.product"),
        (BASE + "cameras: [{kind: folder, source: f, product: ../x}]\n", "cameras.0.product"),
        (BASE + "cameras: [{kind: device, source: 0, when_full: wait}]\n", "cameras.0"),
    ],
)
def test_config_errors(tmp_path, text, fragment):
    f = tmp_path / "line.yaml"
    f.write_text(text)
    with pytest.raises(AgptError, match="line.yaml") as e:
        load_config(f)
    assert fragment in str(e.value), str(e.value)


def test_config_cameras_paths_and_products(tmp_path):
    f = tmp_path / "line.yaml"
    f.write_text(
        BASE
        + "cameras:\n  - {name: left, kind: folder, source: imgs}\n  - {name: right, kind: file, source: v.mp4, product: tiles}\n"
    )
    cfg = load_config(f)
    assert cfg.camera is None and [c.name for c in cfg.camera_list] == ["left", "right"]
    assert [c.source for c in cfg.cameras] == [str(tmp_path / "imgs"), str(tmp_path / "v.mp4")]
    assert [cfg.camera_product(c) for c in cfg.cameras] == ["cookie", "tiles"]
    single = parse_config({"bundle": "b", "product": "p", "camera": {"kind": "folder", "source": "f"}})
    assert single.camera_list == [single.camera] and single.cameras is None


def test_example_config_two_camera_block_parses(tmp_path):
    """configs/line-example.yaml carries a commented `cameras:` example: uncommented, it replaces `camera:`."""
    text = (ROOT / "configs" / "line-example.yaml").read_text().splitlines()
    start = text.index("#cameras:")
    block = []
    for line in text[start:]:
        if not line.startswith("#"):
            break
        block.append(line[1:])
    cam_start = text.index("camera:")
    cam_end = next(i for i in range(cam_start + 1, len(text)) if text[i] and not text[i].startswith(" "))
    edited = text[:cam_start] + block + text[cam_end:]
    # in tmp_path, not the repository's configs/ (a test never writes into the checkout): relative paths
    # then resolve against tmp_path, which is all that differs
    f = tmp_path / "configs" / "two_cameras.yaml"
    f.parent.mkdir()
    f.write_text("\n".join(edited) + "\n")
    cfg = load_config(f)
    assert len(cfg.cameras) == 2 and len({c.name for c in cfg.cameras}) == 2
    assert any(c.product for c in cfg.cameras)


def test_daemon_refuses_unknown_source_names(bundle):
    cfg = multi_config(bundle, [{"name": "a"}, {"name": "b"}])
    with pytest.raises(AgptError, match="unknown cameras: zz"):
        Daemon(cfg, inspector=FakeInspector(), sources={"zz": CountingSource()})
    with pytest.raises(AgptError, match="1 sources for 2 cameras"):
        Daemon(cfg, inspector=FakeInspector(), sources=[CountingSource()])
    one = daemon_config(bundle, camera=CameraConfig(kind="synthetic", source="t"))
    assert not Daemon(one, inspector=FakeInspector()).multi


# ---- the real inspector -----------------------------------------------------------------------------------


def test_two_cameras_on_the_tiny_bundle(tiny_bundle, tmp_path):
    """Real Inspector (max_batch 2, one LLM sequence per camera): both cameras' frames judged in batches, each
    with its own product (decoder map vs normal-shot bank), each equal to judging the frame alone."""
    import cv2

    from runtime.cli import main as agpt

    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    rng = np.random.default_rng(3)
    for name in ("left", "right", "shots"):
        (tmp_path / name).mkdir()
        for i in range(3 if name != "shots" else 2):
            img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(tmp_path / name / f"{i:03d}.png"), img)
    assert agpt(["bank", "build", "--bundle", str(bundle), "--product", "cookie_fs", "--description", "a cookie",
                 str(tmp_path / "shots")]) == 0  # fmt: skip
    cfg_file = tmp_path / "line.yaml"
    cfg_file.write_text(
        "bundle: tiny\nproduct: cookie\npublish: tcp://127.0.0.1:*\ncontrol: tcp://127.0.0.1:*\nlog_level: WARNING\n"
        "heartbeat_s: 0.2\nstart_paused: true\nbackend: {intra_op_threads: 1, llm_threads: 1}\ncameras:\n"
        "  - {name: left, kind: folder, source: left, when_full: wait}\n"
        "  - {name: right, kind: folder, source: right, when_full: wait, product: cookie_fs}\n"
    )
    d = Daemon(load_config(cfg_file))
    d.start()
    try:
        assert (
            d.inspector.max_batch == 2 and d.inspector.llm.n_seq_max == 2 and d.inspector.llm.n_ctx == 512
        )  # backend.llm_ctx null: first_token mode sizes 512 per sequence
        with ResultSubscriber(d.publish_endpoint, ["line1.station1."]) as sub:
            collect(sub, lambda b: b["statuses"], timeout=10)
            assert request(d.control_endpoint, {"cmd": "resume"})["ok"]  # subscribed: no result can be missed now
            assert d.wait(120)
            stopper = threading.Thread(target=d.shutdown)
            stopper.start()
            bag = collect(sub, final_seen, timeout=60)
            stopper.join()
    finally:
        d.shutdown()
    results = by_camera(bag["results"])
    assert {cam: [h.frame_id for h in hs] for cam, hs in results.items()} == {"left": [1, 2, 3], "right": [1, 2, 3]}
    assert {h.product for h in results["left"]} == {"cookie"} and {h.product for h in results["right"]} == {"cookie_fs"}
    assert max(h.batch for hs in results.values() for h in hs) == 2
    assert all(h.judge == "llm-first_token" and 0.0 <= h.p_anomaly <= 1.0 for hs in results.values() for h in hs)
    store = d.store
    for cam, product in (("left", "cookie"), ("right", "cookie_fs")):
        pack = store.load(product)
        for h, f in zip(results[cam], sorted((tmp_path / cam).iterdir())):
            alone = d.inspector.judge(cv2.imread(str(f)), pack)
            assert abs(alone.p_anomaly - h.p_anomaly) <= 1e-4, (cam, h.frame_id, alone.p_anomaly, h.p_anomaly)
            assert abs(alone.score - h.score) <= 1e-4


def test_backend_blas_threads(bundle):
    """backend.blas_threads reaches numpy's OpenBLAS (when numpy uses one), and the daemon runs with it."""
    from runtime.pipeline.blas import get_blas_threads, set_blas_threads

    before = get_blas_threads()
    cfg = daemon_config(bundle, backend={"blas_threads": 1})
    try:
        with running(cfg, sources=[CountingSource(period=0.002)]) as d:
            while d.judged < 3:
                time.sleep(0.01)
            assert get_blas_threads() in (None, 1)
    finally:
        if before is not None:
            set_blas_threads(before)
    assert get_blas_threads() == before
