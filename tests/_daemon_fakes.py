"""Test doubles for the daemon tests: an inspector with the real Inspector's interface (no model), and
camera sources that count, gate, vanish and misbehave on purpose. Imported by tests/line/test_daemon*.py,
tests/line/test_camera.py and tests/pipeline/test_bank.py, and by the SIGTERM subprocess.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.line.config import CameraConfig, DaemonConfig
from runtime.line.control import request
from runtime.pipeline.products import PackSpec, build_pack
from runtime.pipeline.store import ProductStore

N_TAPS, TAP_N, TAP_W, TEXT_DIM = 4, 16, 8, 4
ENCODER_SHA = "e" * 64
TOPICS = ["line1.station3."]  # what daemon_config publishes on


@dataclass
class FakeJudgement:
    verdict: bool | None
    p_anomaly: float | None
    score: float
    answer: str | None
    locations: list[str]
    map: np.ndarray
    judge: str
    latency_ms: dict[str, float] = field(default_factory=dict)
    bank_id: str | None = None


class FakeInspector:
    """Same interface as runtime.pipeline.inspector.Inspector; the 'model' is the frame's mean brightness."""

    encoder_sha256 = ENCODER_SHA
    pack_spec = PackSpec(ENCODER_SHA, (TAP_W,) * N_TAPS, TEXT_DIM)
    manifest_products: dict = {}

    def __init__(self, delay: float = 0.0, fail_frames: set[int] | None = None, max_batch: int = 8):
        self.delay = delay
        self.fail_values = fail_frames or set()
        self.calls = 0
        self.banks_seen: list[str] = []
        self.ask_gate: threading.Event | None = None  # when set up, ask() waits for it (a slow LLM)
        self.max_batch = max_batch
        self.batch_sizes: list[int] = []  # one entry per judge_batch call

    def taps(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        import cv2

        small = cv2.resize(image_bgr, (4, 4), interpolation=cv2.INTER_AREA).reshape(TAP_N, 3).astype(np.float32) / 255
        base = np.concatenate([small, small, small[:, :2]], axis=1)  # (16, 8)
        return [base + 0.01 * k for k in range(N_TAPS)]

    def text_features(self, name: str) -> np.ndarray:
        t = np.ones((2, TEXT_DIM), np.float32)
        t[1] *= -1
        return t / np.linalg.norm(t, axis=1, keepdims=True)

    def judge(self, frame_bgr: np.ndarray, pack) -> FakeJudgement:
        if self.delay:
            time.sleep(self.delay)
        return self._judgement(frame_bgr, pack)

    def _judgement(self, frame_bgr: np.ndarray, pack) -> FakeJudgement:
        self.calls += 1
        value = int(frame_bgr[0, 0, 0])
        if value in self.fail_values:
            raise RuntimeError(f"fake failure on pixel value {value}")
        score = float(frame_bgr.mean()) / 255.0
        m = np.full((224, 224), score, np.float32)
        m[:8, :8] = 1.0
        verdict = score > 0.5
        self.banks_seen.append(pack.bank_id)
        return FakeJudgement(
            verdict, score, float(m.max()), None, ["top left"] if verdict else [], m, "llm-first_token",
            {"preprocess": 0.1, "encoder": 0.2, "map": 0.1, "prompt": 0.1, "llm": 0.3}, pack.bank_id,
        )  # fmt: skip

    def judge_batch(self, frames, packs) -> list[FakeJudgement]:
        """Several cameras' frames in one call (as Inspector.judge_batch): one delay for the whole batch; one
        failing frame fails the call (the daemon then judges the frames one by one)."""
        frames, packs = list(frames), list(packs)
        assert len(frames) == len(packs) <= self.max_batch, (len(frames), len(packs), self.max_batch)
        self.batch_sizes.append(len(frames))
        if self.delay:
            time.sleep(self.delay)
        bad = [int(f[0, 0, 0]) for f in frames if int(f[0, 0, 0]) in self.fail_values]
        if bad:
            raise RuntimeError(f"fake batch failure on pixel value {bad[0]}")
        return [self._judgement(f, p) for f, p in zip(frames, packs)]

    def ask(self, ctx, question: str) -> str:
        if self.ask_gate is not None:
            self.ask_gate.wait(10)
        return f"frame {ctx.frame_id} ({ctx.pack.name}): {question}"


class CountingSource:
    """Frame i (1-based) is filled with value (i % 200) + 20; every third frame is labelled anomalous
    (bright). `gate` holds the stream until set; `n` frames then end of stream (None: endless)."""

    def __init__(self, n: int | None = None, gate: threading.Event | None = None, shape=(48, 64), period: float = 0.0):
        self.n, self.gate, self.shape, self.period = n, gate, shape, period
        self.i = 0
        self.eof = False
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def read(self):
        if self.gate is not None:
            while not self.gate.wait(0.05):
                pass
        if self.n is not None and self.i >= self.n:
            self.eof = True
            return False, None, None
        if self.period:
            time.sleep(self.period)
        self.i += 1
        anomalous = self.i % 3 == 0
        value = 200 if anomalous else (self.i % 100) + 20
        img = np.full((*self.shape, 3), value, np.uint8)
        return True, img, (anomalous, None)

    def close(self) -> None:
        pass


class FlakySource(CountingSource):
    """Reads fail (alternately raising and returning False) while `down` is set; opens fail too."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.down = threading.Event()
        self.failed_reads = 0
        self.failed_opens = 0

    def open(self) -> None:
        if self.down.is_set():
            self.failed_opens += 1
            raise OSError("no such device")
        super().open()

    def read(self):
        if self.down.is_set():
            self.failed_reads += 1
            if self.failed_reads % 2:
                raise OSError("device unplugged")
            return False, None, None
        time.sleep(0.002)
        return super().read()


class ScriptedSource:
    """Yields the given frames (arrays, None, garbage) once, then ends."""

    def __init__(self, frames: list):
        self.frames = list(frames)
        self.eof = False

    def open(self) -> None:
        pass

    def read(self):
        if not self.frames:
            self.eof = True
            return False, None, None
        return True, self.frames.pop(0), None

    def close(self) -> None:
        pass


def make_bundle(root: Path, insp: FakeInspector | None = None) -> Path:
    """A bundle folder holding only products/: 'widget' (shots) and 'gadget' (shots, other images)."""
    insp = insp or FakeInspector()
    store = ProductStore(root / "products", insp.pack_spec)
    rng = np.random.default_rng(0)
    for name, lo in (("widget", 0), ("gadget", 128)):
        shots = [rng.integers(lo, lo + 120, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
        store.save(build_pack(insp, name, f"a {name}", shots))
    return root


def daemon_config(bundle: Path, **kw) -> DaemonConfig:
    camera = kw.pop("camera", None)
    if camera is None and kw.get("cameras") is None:
        camera = CameraConfig(kind="synthetic", source="test", when_full="wait")
    base = dict(
        bundle=bundle, product="widget", camera=camera, publish="tcp://127.0.0.1:*", control="tcp://127.0.0.1:*",
        topic_prefix="line1.station3", heartbeat_s=0.2, log_level="WARNING",
    )  # fmt: skip
    base.update(kw)
    return DaemonConfig(**base)


def collect(sub, until, timeout: float = 10.0) -> dict:
    """Messages from a ResultSubscriber until `until(bag)` is true or `timeout` passes (then AssertionError).
    results: ResultMessages; events / statuses: the models; status_msgs / event_msgs: the messages with their topics."""
    from runtime.tools.subscribe import EventMessage, ResultMessage, StatusMessage

    bag: dict = {"results": [], "events": [], "statuses": [], "event_msgs": [], "status_msgs": []}
    deadline = time.monotonic() + timeout
    while not until(bag):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out: {len(bag['results'])} results, events {[e.kind for e in bag['events']]}"
        m = sub.recv(min(left, 0.5))
        if isinstance(m, ResultMessage):
            bag["results"].append(m)
        elif isinstance(m, EventMessage):
            bag["events"].append(m.event)
            bag["event_msgs"].append(m)
        elif isinstance(m, StatusMessage):
            bag["statuses"].append(m.status)
            bag["status_msgs"].append(m)
    return bag


def final_seen(bag: dict) -> bool:
    return any(s.final for s in bag["statuses"])


def multi_config(bundle: Path, cameras: list[dict], **kw) -> DaemonConfig:
    """A config with `cameras:` (each dict: name, and optionally product / when_full / ...; synthetic kind)."""
    cams = [CameraConfig(**{"kind": "synthetic", "source": "test", "when_full": "wait", **c}) for c in cameras]
    return daemon_config(bundle, camera=None, cameras=cams, **kw)


# ---- running a daemon in a test ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(cfg, inspector=None, source=None, sources=None):
    """A started Daemon (one camera's source, or several cameras' sources), shut down on exit."""
    from runtime.line.daemon import Daemon

    d = Daemon(cfg, inspector=inspector or FakeInspector(), source=source, sources=sources)
    d.start()
    try:
        yield d
    finally:
        d.shutdown()


def connected(sub) -> None:
    """Wait until the subscription is live (the publisher re-sends the last status to a new subscriber)."""
    collect(sub, lambda b: b["statuses"], timeout=5)


def ctl(d, payload, timeout_s: float = 10.0) -> dict:
    return request(d.control_endpoint, payload, timeout_s)


def run_to_end(cfg, inspector, timeout: float = 30.0, *, source=None, sources=None) -> tuple:
    """Start with every source gated, subscribe, open the gates, run to the end of every stream.
    (daemon, what the subscriber got up to the final status); bag["subscriber"] keeps its loss counters."""
    from runtime.line.daemon import Daemon
    from runtime.tools.subscribe import ResultSubscriber

    gate = threading.Event()
    srcs = [source] if source is not None else list(sources.values() if isinstance(sources, dict) else sources)
    for s in srcs:
        s.gate = gate
    d = Daemon(cfg, inspector=inspector, source=source, sources=sources)
    d.start()
    with ResultSubscriber(d.publish_endpoint, TOPICS) as sub:
        try:
            connected(sub)
            gate.set()
            assert d.wait(timeout), f"the daemon did not finish its finite sources in {timeout} s"
        finally:
            d.shutdown()
        bag = collect(sub, final_seen)
    bag["subscriber"] = sub
    return d, bag
