"""`agpt run --config FILE`: the on-line inspection daemon.

Threads and who owns what:
  capture    one per camera: source -> preprocessing (inspector.prepare) -> the camera's slot of
             runtime.line.slots.CameraSlots (one waiting frame; a live camera's newer frame replaces it, counted)
  loop       owns the inspector and the packs: ready frames -> inspector.judge / judge_batch -> publisher;
             between two frames it runs queued tasks (apply a swapped pack, build a bank, answer 'ask')
  publisher  owns the XPUB socket: results, events, status heartbeat
  control    owns the ROUTER socket: parses requests, answers fast ones itself, hands slow ones on
  loader     one worker: reads and validates packs and shot images off the loop
A changeover therefore never stalls the line while a pack loads, and never mixes two packs in one frame:
the loop reads the camera's pack once per frame, and a swap replaces that reference between frames.

The preprocessing runs on the capture thread so that it overlaps the models on the loop (on 2 cores,
tiny bundle: one camera goes from ~67 to ~95 frames/s); a live camera faster than inspection then also
preprocesses the frames that are dropped, which `fps_limit` bounds.

Several cameras (`cameras:` in the config) run through the same loop: it takes the ready frames, at most
one per camera (round robin past max_batch), and judges them in one inspector.judge_batch call, each
with its own camera's pack. A batch that fails is judged again frame by frame, so one bad frame fails
only its own camera's result. Each camera (a Lane) keeps its own frame ids, product, pack and counters;
a swap lands between two batches.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from runtime.errors import AgptError
from runtime.line import watchdog
from runtime.line.camera import Camera, Frame, Source
from runtime.line.config import CameraConfig, DaemonConfig, check_security, load_config
from runtime.line.control import ControlServer, start_authenticator
from runtime.line.messages import (
    AddProductRequest,
    AskRequest,
    CameraStatus,
    Drops,
    FrameTransformInfo,
    ListProductsRequest,
    MaskInfo,
    PauseRequest,
    Reply,
    Request,
    ResultHeader,
    ResumeRequest,
    Status,
    StatusRequest,
    SwapBankRequest,
    Truth,
)
from runtime.line.publish import Publisher
from runtime.line.slots import CameraSlots, SlotQueue
from runtime.pipeline.products import ProductPack, ProductStore, build_pack, read_image
from runtime.sinks.base import SinkEvent, SinkResult
from runtime.sinks.build import build_sinks
from runtime.sinks.fanout import Fanout

log = logging.getLogger("agpt.daemon")

# stops that are not failures: asked for (signal, control, shutdown()), the frame limit, a finite source's end
CLEAN_STOPS = ("requested", "shutdown", "SIGTERM", "SIGINT", "frames", "camera_end")


@dataclass
class FrameContext:
    """What `ask` gets about a judged frame (kept for the last keep_frames frames)."""

    frame_id: int
    camera: str
    image: np.ndarray  # the camera frame, BGR
    judgement: Any  # the inspector's Judgement for it
    pack: ProductPack  # the pack it was judged with
    capture_time: float


@dataclass(eq=False)
class Lane:
    """One camera's own state: capture thread, product pack, frame ids and counters."""

    index: int
    cfg: CameraConfig
    base_product: str  # the config's product for this camera (what a restart resumes from)
    camera: Camera | None = None
    pack: ProductPack | None = None
    judged: int = 0
    failed: int = 0
    paused_drops: int = 0
    last_frame_id: int = 0
    times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))

    @property
    def name(self) -> str:
        return self.cfg.name

    def fps(self) -> float:
        t = list(self.times)
        if len(t) < 2 or time.monotonic() - t[-1] > 5.0:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)


def encode_mask(m: np.ndarray | None) -> tuple[bytes, tuple[int, int] | None]:
    """8-bit PNG of a [0,1] map: uint8 = round(255*map). The line pays for every frame: the 'up' filter alone
    with zlib level 1 is twice as fast as the adaptive filters and smaller on smooth maps (0.45 vs 0.9 ms)."""
    import cv2

    if m is None:
        return b"", None
    m = np.asarray(m, np.float32)
    m = m.reshape(m.shape[-2:]) if m.ndim > 2 else m
    u8 = np.rint(np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", u8, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    return (buf.tobytes(), (u8.shape[1], u8.shape[0])) if ok else (b"", None)


def _transform_info(judgement: Any, frame: np.ndarray, inspector: Any) -> FrameTransformInfo | None:
    t = getattr(judgement, "transform", None)
    if t is None:
        from runtime.pipeline.preprocess import plan

        pre = getattr(inspector, "preprocess", None)
        t = plan(frame.shape[0], frame.shape[1], getattr(pre, "size", 224), getattr(pre, "resize", "shorter_side_crop"))
    d = t if isinstance(t, dict) else (t.as_dict() if hasattr(t, "as_dict") else vars(t))
    try:
        return FrameTransformInfo.model_validate(d)
    except Exception:
        return None


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        inspector: Any = None,
        source: Source | None = None,
        ctx: zmq.Context | None = None,
        sources: Any = None,
    ):
        """source: the (one) camera's source instead of the config's; sources: several cameras' sources, a list in
        config order or a dict by camera name (missing ones come from the config)."""
        check_security(cfg)
        self.cfg = cfg
        self.inspector = inspector
        cams = cfg.camera_list
        self.lanes = [Lane(i, c, cfg.camera_product(c)) for i, c in enumerate(cams)]
        self.multi = len(self.lanes) > 1
        if isinstance(sources, dict):
            unknown = set(sources) - {c.name for c in cams}
            if unknown:
                raise AgptError(f"sources for unknown cameras: {', '.join(sorted(unknown))}")
            self._sources = [sources.get(c.name) for c in cams]
        elif sources is not None:
            if len(sources) != len(cams):
                raise AgptError(f"{len(sources)} sources for {len(cams)} cameras")
            self._sources = list(sources)
        else:
            self._sources = [source] + [None] * (len(cams) - 1)
        self._ctx = ctx
        self._own_ctx = ctx is None
        self.paused = threading.Event()
        if cfg.start_paused:
            self.paused.set()
        # totals over the cameras (one camera: its own counters)
        self.judged = 0
        self.errors = 0  # judging failures, all cameras (Lane.failed per camera)
        self.truth_frames = 0
        self.truth_correct = 0
        self.stop_reason: str | None = None
        self._contexts: collections.deque[FrameContext] = collections.deque(maxlen=cfg.keep_frames * len(self.lanes))
        self._tasks: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._tasks_lock = threading.Lock()
        self._loop_done = False
        self._stop = threading.Event()
        self._done = threading.Event()
        self._shut = False
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self._auth = None
        self._started = 0.0
        self._loop_ticks = 0  # advanced by every loop iteration: the systemd watchdog's proof of life
        self._ticks_at_beat = -1
        self._ready = False
        self.slots: CameraSlots | None = None
        self.max_batch = 1
        self.batch_retries = 0  # batches judged again frame by frame after judge_batch raised
        self.publisher: Publisher | None = None
        self.control: ControlServer | None = None
        self.sinks = Fanout()  # start() builds the configured ones
        self._loop_thread: threading.Thread | None = None

    # the first (or only) camera's state, under the names the one-camera daemon has always had
    @property
    def pack(self) -> ProductPack | None:
        return self.lanes[0].pack

    @property
    def camera(self) -> Camera | None:
        return self.lanes[0].camera

    @property
    def last_frame_id(self) -> int:
        return self.lanes[0].last_frame_id

    def lane(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise AgptError(f"no camera {name!r} (cameras: {', '.join(l.name for l in self.lanes)})")

    # ---- start / stop -------------------------------------------------------------------------------

    def open_inspector(self):
        """The inspector this config asks for (start() opens it when none was given)."""
        from runtime.pipeline.inspector import Inspector

        if not self.multi:
            return Inspector.from_config(self.cfg.bundle, self.cfg.backend, self.cfg.verdict_mode)
        # one LLM sequence per frame of a batch; n_ctx is per sequence: a frame's prompt (~100 positions) plus an
        # answer fits 1024, and the KV cache stays batch x 1024 cells
        return Inspector.from_config(self.cfg.bundle, self.cfg.backend, self.cfg.verdict_mode, max_batch=self._batch_limit(),
                                     llm_options={"n_ctx": 1024})  # fmt: skip

    def _batch_limit(self) -> int:
        return min(len(self.lanes), self.cfg.max_batch or len(self.lanes))

    def _manifest_products(self) -> dict:
        products = getattr(self.inspector, "manifest_products", None)
        if products is not None:
            return dict(products)
        bundle = getattr(self.inspector, "bundle", None)
        if bundle is None:
            try:
                from runtime.pipeline.bundle import load_bundle

                bundle = load_bundle(self.cfg.bundle, verify=False)
            except AgptError:
                return {}
        return dict(bundle.manifest.products)

    def _initial_pack(self, lane: Lane) -> ProductPack:
        name = lane.base_product
        last = None
        if self.cfg.resume_last_product:
            last = self.store.active_entry(lane.name if self.multi else None)
        # Resume the last committed changeover, unless the config's product was edited since then.
        if last and last.get("base") == name and last.get("product") != name:
            try:
                pack = self.store.load(last["product"])
                log.info("resuming %s with product %s (last changeover)", lane.name, pack.name)
                return pack
            except AgptError as e:
                log.warning("last committed product %s does not load (%s); starting with %s", last["product"], e, name)
        return self.store.load(name)

    def start(self) -> None:
        cfg = self.cfg
        if cfg.backend.blas_threads is not None:
            from runtime.pipeline.blas import set_blas_threads

            set_blas_threads(cfg.backend.blas_threads)
        if self.inspector is None:
            self.inspector = self.open_inspector()
        self.store = ProductStore(cfg.bundle / "products", self.inspector.pack_spec, self._manifest_products())
        for lane in self.lanes:
            lane.pack = self._initial_pack(lane)
        self.sinks = Fanout(build_sinks(cfg, self))
        self.sinks.start()  # a sink that cannot start (bad URL, missing extra) refuses the start, before any bind
        self._ctx = self._ctx or zmq.Context()
        curve_key = None
        if cfg.curve is not None:
            self._auth = start_authenticator(self._ctx, cfg.curve.authorized_clients)
            curve_key = cfg.curve.server_secret_key
        try:
            self.publisher = Publisher(
                self._ctx, cfg.publish, cfg.topic_prefix, cfg.sndhwm, cfg.max_message_bytes, cfg.heartbeat_s,
                self._heartbeat, curve_key if (cfg.curve is None or cfg.curve.results) else None,
            )  # fmt: skip
            self.control = ControlServer(self._ctx, cfg.control, self.handle, cfg.max_message_bytes, curve_key)
        except zmq.ZMQError as e:
            self.sinks.stop(timeout=1.0)
            self._close_zmq()
            raise AgptError(f"cannot bind {cfg.publish if self.publisher is None else cfg.control}: {e}") from None
        # each camera's thread preprocesses its frames: that work overlaps the models on the inspection loop
        prepare = getattr(self.inspector, "prepare", None)
        self.slots = CameraSlots(len(self.lanes))
        self.max_batch = max(1, min(self._batch_limit(), int(getattr(self.inspector, "max_batch", len(self.lanes)))))
        for lane, src in zip(self.lanes, self._sources):
            sink = SlotQueue(self.slots, lane.index, lane.cfg.when_full)
            lane.camera = Camera(lane.cfg, src, on_event=self._camera_event, queue=sink, prepare=prepare)
        self._started = time.monotonic()
        self.publisher.start()
        self.control.start()
        for lane in self.lanes:
            lane.camera.start()
        self._loop_thread = threading.Thread(target=self._loop, name="inspect", daemon=True)
        self._loop_thread.start()
        first = self.lanes[0]
        detail = {"product": first.pack.name, "bank_id": first.pack.bank_id, "camera": first.name}
        if self.multi:
            detail["cameras"] = {l.name: {"product": l.pack.name, "bank_id": l.pack.bank_id} for l in self.lanes}
        self._event("started", detail)
        for lane in self.lanes:
            log.info("inspecting %s as %s (bank %s)", lane.name, lane.pack.name, lane.pack.bank_id)
        log.info("results on %s, control on %s%s", self.publisher.endpoint, self.control.endpoint,
                 f"; {len(self.lanes)} cameras, batches of up to {self.max_batch}" if self.multi else "")  # fmt: skip
        self._ready = True  # from now on the heartbeat feeds systemd's watchdog (never before READY)
        watchdog.notify(watchdog.READY)

    @property
    def publish_endpoint(self) -> str:
        return self.publisher.endpoint

    @property
    def control_endpoint(self) -> str:
        return self.control.endpoint

    def _wake(self) -> None:
        """Let the loop's wait for a frame return now (a task is queued, or a stop)."""
        if self.slots is not None:
            self.slots.wake()

    def request_stop(self, reason: str = "requested") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def shutdown(self) -> None:
        """After the loop ended (or to force it): stop capture and control, publish the final status, close."""
        if self._shut:
            return
        self._shut = True
        self.request_stop(self.stop_reason or "shutdown")
        watchdog.notify(watchdog.STOPPING)
        if self._loop_thread is not None:
            self._loop_thread.join()  # the frame (batch) in flight finishes first
        for lane in self.lanes:
            if lane.camera is not None:
                lane.camera.stop()
        if self.slots is not None:
            self.slots.close()
        if self.control is not None:
            self.control.stop()
        self._loader.shutdown(wait=True, cancel_futures=True)
        if self.publisher is not None:
            self._event("stopping", {"reason": self.stop_reason, "frames_judged": self.judged})
            self.publisher.stop(final_status=self.status(final=True))
        self.sinks.stop()  # after the final events: the archive records the stop too
        self._close_zmq()
        log.info("stopped (%s) after %d judged frames", self.stop_reason, self.judged)

    def _close_zmq(self) -> None:
        for s in (self.publisher, self.control):
            if s is not None and not s.sock.closed:
                s.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set() and self.stop_reason in ("SIGTERM", "SIGINT"):
            # a second signal while the first one's shutdown is stuck (a frame that never ends): give up now
            log.error("%s during shutdown: exiting without finishing", name)
            os._exit(1)
        log.info("%s: finishing the frame in flight, then stopping", name)
        self.request_stop(name)

    def run(self) -> int:
        """Foreground: start, serve until SIGTERM/SIGINT, the frame limit or the end of a finite source."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._done.wait(0.2):
                pass
        finally:
            self.shutdown()
            for sig, h in old.items():
                signal.signal(sig, h)
        return self.exit_code

    @property
    def exit_code(self) -> int:
        """0 for a stop someone asked for or a run that is done; 1 otherwise (systemd's Restart=on-failure and
        Docker's on-failure policy restart the station only when the exit says it failed)."""
        return 0 if self.stop_reason in CLEAN_STOPS else 1

    # ---- the inspection loop ------------------------------------------------------------------------

    def call_in_loop(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the loop thread between two frames (batches); the Future carries its result."""
        fut: Future = Future()
        with self._tasks_lock:
            if self._loop_done:
                fut.set_exception(AgptError("daemon stopping"))
                return fut
            self._tasks.put((fn, fut))
        self._wake()
        return fut

    def _run_tasks(self) -> None:
        while True:
            try:
                fn, fut = self._tasks.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def _loop(self) -> None:
        try:
            self._loop_frames()
        except BaseException:
            log.exception("inspection loop crashed")
            self.request_stop("loop_error")
        finally:
            with self._tasks_lock:
                self._loop_done = True
            while True:  # nobody will run these now
                try:
                    _, fut = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(AgptError("daemon stopping"))
            self._done.set()

    def _all_ended(self) -> bool:
        return all(l.camera.state == "ended" and not self.slots.full(l.index) for l in self.lanes)

    def _paused_drop(self, cam: int, frame: Frame) -> None:
        lane = self.lanes[cam]
        lane.last_frame_id = frame.frame_id
        lane.paused_drops += 1

    def _loop_frames(self) -> None:
        """Every round takes the ready frames, at most one per camera, and judges them: one camera's alone,
        several cameras' as one batch. While paused, wait sources keep their frame for the resume and live
        cameras' frames are counted as paused drops, also for frames a take() returned as the pause came."""
        slots = self.slots
        live = {l.index for l in self.lanes if l.cfg.when_full != "wait"}
        held: list[tuple[int, Frame]] = []  # wait sources' frames taken just as a pause came: judged after the resume
        while not self._stop.is_set():
            self._loop_ticks += 1
            self._run_tasks()
            if self.paused.is_set():
                if not live:
                    self._stop.wait(0.05)
                for cam, frame in slots.take(None, timeout=0.1, only=live) if live else []:
                    self._paused_drop(cam, frame)
                continue
            limit = self.max_batch
            if self.cfg.frames is not None:  # --frames N judges N frames, not N rounded up to a whole batch
                limit = min(limit, max(self.cfg.frames - self.judged, 1))
            ready, held = (held, []) if held else (slots.take(limit, timeout=0.1), [])
            if not ready:
                if self._all_ended():
                    self.request_stop("camera_end")
                continue
            if self.paused.is_set():
                for cam, frame in ready:
                    if cam in live:
                        self._paused_drop(cam, frame)
                    else:
                        held.append((cam, frame))
                continue
            self._inspect_batch(ready)
            if self.cfg.frames is not None and self.judged >= self.cfg.frames:
                self.request_stop("frames")

    def _drops(self, lane: Lane | None = None) -> Drops:
        """One camera's counters, or (lane None) the sums over the cameras."""
        pub = self.publisher
        lanes = self.lanes if lane is None else [lane]
        cams = [l.camera for l in lanes if l.camera is not None]
        return Drops(
            queue=sum(c.dropped for c in cams),
            camera_bad=sum(c.bad_frames for c in cams),
            paused=sum(l.paused_drops for l in lanes),
            failed=sum(l.failed for l in lanes),
            publish=pub.drops if pub else 0,
        )

    def _judge_failed(self, lane: Lane, frame: Frame, e: BaseException, stage: str = "judge") -> None:
        lane.failed += 1
        self.errors += 1
        if self.errors <= 3:  # a model failing on every frame must not flood the log
            log.error("judging frame %d of %s failed", frame.frame_id, lane.name, exc_info=e)
        elif self.errors % 100 == 0:
            log.warning("judging keeps failing (%d errors so far): %s: %s", self.errors, type(e).__name__, e)
        detail = {"frame_id": frame.frame_id, "stage": stage, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        if self.multi:
            detail["camera"] = lane.name
        self._event("judge_error", detail)

    def _inspect(self, lane: Lane, frame: Frame, pack: ProductPack | None = None) -> None:
        """One frame alone: judge and publish it, or report why it failed."""
        pack = lane.pack if pack is None else pack  # one reference for the whole frame: a swap cannot land inside it
        x = frame.model_input
        if isinstance(x, Exception):  # preprocessing on the camera's thread failed
            self._judge_failed(lane, frame, x)
            return
        t0 = time.monotonic()
        try:
            j = self.inspector.judge(x, pack)
        except Exception as e:
            self._judge_failed(lane, frame, e)
            return
        self._publish_or_fail(lane, frame, pack, j, t0, time.monotonic())

    def _inspect_batch(self, ready: list[tuple[int, Frame]]) -> None:
        """Frames of several cameras: one judge_batch; if it raises, each frame again alone (only the bad one fails)."""
        todo = []
        for cam, frame in ready:
            lane = self.lanes[cam]
            lane.last_frame_id = frame.frame_id
            if isinstance(frame.model_input, Exception):  # preprocessing on the camera's thread failed
                self._judge_failed(lane, frame, frame.model_input)
            else:
                todo.append((lane, frame, lane.pack))  # each camera's pack read once for this batch
        if not todo:
            return
        judge_batch = getattr(self.inspector, "judge_batch", None)
        t0 = time.monotonic()
        js = None
        if judge_batch is not None and len(todo) > 1:
            try:
                js = judge_batch([frame.model_input for _, frame, _ in todo], [pack for *_, pack in todo])
                if len(js) != len(todo):
                    raise AgptError(f"judge_batch returned {len(js)} judgements for {len(todo)} frames")
            except Exception as e:
                self.batch_retries += 1
                if self.batch_retries <= 3 or self.batch_retries % 100 == 0:
                    log.warning("a batch of %d frames failed (%s: %s); judging them one by one (%d times so far)",
                                len(todo), type(e).__name__, str(e)[:200], self.batch_retries)  # fmt: skip
                js = None
        if js is not None:
            t1 = time.monotonic()
            for (lane, frame, pack), j in zip(todo, js):
                self._publish_or_fail(lane, frame, pack, j, t0, t1, len(todo))
            return
        for lane, frame, pack in todo:
            self._inspect(lane, frame, pack)

    def _publish_or_fail(self, lane: Lane, frame: Frame, pack: ProductPack, j: Any, t0: float, t1: float, batch: int = 1) -> None:
        """A judgement the result header refuses (a malformed value) fails its own frame, never the loop."""
        try:
            self._publish(lane, frame, pack, j, t0, t1, batch)
        except Exception as e:
            self._judge_failed(lane, frame, e, stage="result")

    def _publish(self, lane: Lane, frame: Frame, pack: ProductPack, j: Any, t0: float, t1: float, batch: int = 1) -> None:
        png, size = encode_mask(getattr(j, "map", None))
        mask = None
        if size is not None:
            mask = MaskInfo(width=size[0], height=size[1], frame_transform=_transform_info(j, frame.image, self.inspector))
        t2 = time.monotonic()
        truth = None
        verdict = None if j.verdict is None else bool(j.verdict)
        if frame.truth is not None:
            label = frame.truth.label
            truth = Truth(label=None if label is None else bool(label), has_mask=frame.truth.mask is not None)
            if label is not None:
                ok = int(verdict == bool(label))
                self.truth_frames += 1
                self.truth_correct += ok
        latency = {"queue": (t0 - frame.capture_mono) * 1e3}
        latency.update({k: float(v) for k, v in (getattr(j, "latency_ms", None) or {}).items()})
        latency.update(judge=(t1 - t0) * 1e3, encode=(t2 - t1) * 1e3, total=(time.monotonic() - frame.capture_mono) * 1e3)
        p = getattr(j, "p_anomaly", None)
        p = None if p is None or not math.isfinite(float(p)) else float(p)
        score = float(getattr(j, "score", 0.0))
        score = score if math.isfinite(score) else 0.0  # a broken map must not make the header unparseable
        header = ResultHeader(
            frame_id=frame.frame_id,
            camera=frame.camera,
            line=self.cfg.line,
            station=self.cfg.station,
            prefix=self.cfg.topic_prefix,
            product=pack.name,
            bank_id=pack.bank_id,
            capture_time=frame.capture_time,
            publish_time=time.time(),
            verdict=verdict,
            p_anomaly=p,
            score=score,
            judge=str(getattr(j, "judge", "")),
            answer=getattr(j, "answer", None),
            locations=list(getattr(j, "locations", None) or []),
            mask=mask,
            latency_ms={k: round(v, 3) for k, v in latency.items()},
            drops=self._drops(lane),
            truth=truth,
            batch=batch,
        )
        self.publisher.publish_result(header, png)
        self.sinks.result(SinkResult(header, png, frame.image, getattr(j, "map", None)))
        lane.judged += 1
        self.judged += 1
        lane.times.append(time.monotonic())
        self._contexts.append(FrameContext(frame.frame_id, frame.camera, frame.image, j, pack, frame.capture_time))

    # ---- state for status / control ------------------------------------------------------------------

    def fps(self) -> float:
        return sum(l.fps() for l in self.lanes)

    def _camera_status(self, lane: Lane) -> CameraStatus:
        cam, pack = lane.camera, lane.pack
        return CameraStatus(
            name=lane.name,
            product=pack.name if pack else None,
            bank_id=pack.bank_id if pack else None,
            camera_state=cam.state if cam else "opening",
            fps=round(lane.fps(), 3),
            queue_depth=len(cam.queue) if cam else 0,
            frames_captured=cam.frame_id if cam else 0,
            frames_judged=lane.judged,
            drops=self._drops(lane),
        )

    def status(self, final: bool = False) -> Status:
        cams = [self._camera_status(l) for l in self.lanes]
        first = cams[0]
        return Status(
            time=time.time(),
            uptime_s=round(time.monotonic() - self._started, 3) if self._started else 0.0,
            fps=round(self.fps(), 3),
            queue_depth=sum(c.queue_depth for c in cams),
            drops=self._drops(),
            product=first.product,
            bank_id=first.bank_id,
            camera=first.name,
            camera_state=first.camera_state,
            frames_captured=sum(c.frames_captured for c in cams),
            frames_judged=self.judged,
            results_published=self.publisher.last_seq("result") if self.publisher else 0,
            truth_frames=self.truth_frames,
            accuracy=(self.truth_correct / self.truth_frames) if self.truth_frames else None,
            paused=self.paused.is_set(),
            errors=self.errors,
            final=final,
            cameras=cams,
            sinks=self.sinks.stats(),
        )

    def _heartbeat(self) -> Status:
        """The publisher's once-a-second status; also pings systemd's watchdog while the loop makes progress
        (a loop stuck inside a frame stops the pings even though this thread still runs)."""
        st = self.status()
        if self._ready and self._loop_ticks != self._ticks_at_beat:
            self._ticks_at_beat = self._loop_ticks
            watchdog.notify(watchdog.WATCHDOG)
            watchdog.notify(watchdog.status_line(f"{st.product}@{st.bank_id} fps {st.fps:.1f} judged {st.frames_judged}"))
        return st

    def _camera_event(self, kind: str, detail: dict) -> None:
        if self.publisher is not None:
            self._event(kind, detail)

    def _event(self, kind: str, detail: dict | None = None) -> None:
        """Every event goes out on the publisher and to every sink (the archive keeps them, MQTT forwards them)."""
        detail = dict(detail or {})
        self.publisher.publish_event(kind, detail)
        self.sinks.event(SinkEvent(kind, detail, time.time()))

    # ---- control --------------------------------------------------------------------------------------

    def _after_frame_ids(self, detail: dict) -> dict:
        if self.multi:
            detail["cameras"] = {l.name: l.last_frame_id for l in self.lanes}
        return detail

    def _targets(self, camera: str | None) -> list[Lane]:
        return list(self.lanes) if camera is None else [self.lane(camera)]

    def handle(self, req: Request) -> Reply | Future:
        """Called on the control thread for every valid request; fast ones answered here."""
        if isinstance(req, StatusRequest):
            return Reply(ok=True, data=self.status().model_dump())
        if isinstance(req, ListProductsRequest):
            data = {"products": self.store.names(), "active": self.pack.name, "bank_id": self.pack.bank_id}
            if self.multi:
                data["cameras"] = {l.name: {"product": l.pack.name, "bank_id": l.pack.bank_id} for l in self.lanes}
            return Reply(ok=True, data=data)
        if isinstance(req, PauseRequest):
            if not self.paused.is_set():
                self.paused.set()
                self._event("paused", self._after_frame_ids({"after_frame_id": self.last_frame_id}))
            return Reply(ok=True, data={"paused": True})
        if isinstance(req, ResumeRequest):
            if self.paused.is_set():
                self.paused.clear()
                self._event("resumed", self._after_frame_ids({"after_frame_id": self.last_frame_id}))
            return Reply(ok=True, data={"paused": False})
        if isinstance(req, (SwapBankRequest, AddProductRequest, AskRequest)) and req.camera is not None:
            try:
                self.lane(req.camera)
            except AgptError as e:
                return Reply(ok=False, error=str(e))
        if isinstance(req, SwapBankRequest):
            return self._loader.submit(self._guard, self._swap_job, req.product, req.camera)
        if isinstance(req, AddProductRequest):
            return self._loader.submit(self._guard, self._add_job, req)
        if isinstance(req, AskRequest):
            return self.call_in_loop(lambda: self._ask_task(req))
        return Reply(ok=False, error=f"unsupported command {req.cmd}")  # pragma: no cover

    @staticmethod
    def _guard(fn: Callable[..., Reply], *args) -> Reply:
        try:
            return fn(*args)
        except AgptError as e:
            return Reply(ok=False, error=str(e))
        except Exception as e:
            log.exception("control job failed")
            return Reply(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")

    def _apply(self, pack: ProductPack, lanes: list[Lane]) -> dict:
        """On the loop thread, between two frames (batches): the changeover itself (one reference per camera)."""
        per = {}
        for lane in lanes:
            old = lane.pack
            lane.pack = pack
            info = {
                "product": pack.name,
                "bank_id": pack.bank_id,
                "previous": {"product": old.name, "bank_id": old.bank_id},
                "after_frame_id": lane.last_frame_id,
                "camera": lane.name,
            }
            self._event("changeover", info)
            log.info("changeover on %s: %s (%s) -> %s (%s) after frame %d", lane.name, old.name, old.bank_id, pack.name,
                     pack.bank_id, lane.last_frame_id)  # fmt: skip
            per[lane.name] = info
        first = per[lanes[0].name]
        out = {k: first[k] for k in ("product", "bank_id", "previous", "after_frame_id")}
        out["cameras"] = {name: {"previous": i["previous"], "after_frame_id": i["after_frame_id"]} for name, i in per.items()}
        return out

    def _commit(self, pack: ProductPack, load_ms: float, lanes: list[Lane]) -> Reply:
        t0 = time.perf_counter()
        info = self.call_in_loop(lambda: self._apply(pack, lanes)).result()
        info["swap_wait_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        info["load_ms"] = round(load_ms, 3)
        try:
            if self.multi:
                self.store.set_active(pack.name, pack.bank_id, cameras={l.name: l.base_product for l in lanes})
            else:
                self.store.set_active(pack.name, pack.bank_id, base=self.cfg.product)
        except OSError as e:
            info["warning"] = f"not remembered for a restart: {e}"
            log.warning("could not record the active product: %s", e)
        return Reply(ok=True, data=info)

    def _swap_job(self, product: str, camera: str | None = None) -> Reply:
        lanes = self._targets(camera)
        t0 = time.perf_counter()
        try:
            pack = self.store.load(product)
        except AgptError as e:
            old = lanes[0].pack
            detail = {"product": product, "error": str(e), "kept": old.name, "kept_bank_id": old.bank_id}
            if self.multi:
                detail["camera"] = camera
            self._event("swap_failed", detail)
            raise
        return self._commit(pack, (time.perf_counter() - t0) * 1e3, lanes)

    def _shot_path(self, s: str) -> Path:
        p = Path(s).expanduser()
        root = self.cfg.shots_root
        if root is not None:
            p = (root / p) if not p.is_absolute() else p
            rp, rr = p.resolve(), Path(root).resolve()
            if rp != rr and rr not in rp.parents:
                raise AgptError(f"{s}: outside shots_root {root}")
            return rp
        return p

    def _add_job(self, req: AddProductRequest) -> Reply:
        t0 = time.perf_counter()
        if self.store.pack_path(req.name).exists() and not req.replace:
            raise AgptError(f"product {req.name!r} exists (send replace: true to overwrite it)")
        images, hashes = [], []
        for s in req.shots:  # read and decode off the loop; only the encoder runs between frames
            img, digest = read_image(self._shot_path(s))
            images.append(img)
            hashes.append(digest)
        insp = self.inspector
        pack = self.call_in_loop(lambda: build_pack(insp, req.name, req.description, images, shot_sha256s=hashes)).result()
        path = self.store.save(pack, replace=req.replace)
        build_ms = (time.perf_counter() - t0) * 1e3
        data = {
            "product": pack.name,
            "bank_id": pack.bank_id,
            "n_shots": len(images),
            "path": str(path),
            "build_ms": round(build_ms, 3),
        }
        self._event("product_added", dict(data))
        if req.activate:
            data["changeover"] = self._commit(pack, 0.0, self._targets(req.camera)).data
        return Reply(ok=True, data=data)

    def _ask_task(self, req: AskRequest) -> Reply:
        kept = [c for c in self._contexts if req.camera is None or c.camera == req.camera]
        if not kept:
            raise AgptError("no frame judged yet" + (f" on camera {req.camera!r}" if req.camera else ""))
        if req.frame_id is None:
            ctx = kept[-1]
        else:
            ctx = next((c for c in reversed(kept) if c.frame_id == req.frame_id), None)
            if ctx is None:
                ids = [c.frame_id for c in kept]
                raise AgptError(f"frame {req.frame_id} is not kept (kept: {ids[0]}..{ids[-1]})")
        ask = getattr(self.inspector, "ask", None)
        if ask is None:
            raise AgptError("this bundle cannot answer questions (no LLM)")
        t0 = time.perf_counter()
        answer = ask(ctx, req.question)
        return Reply(
            ok=True,
            data={"frame_id": ctx.frame_id, "camera": ctx.camera, "product": ctx.pack.name, "question": req.question,
                  "answer": str(answer), "ms": round((time.perf_counter() - t0) * 1e3, 3)},
        )  # fmt: skip


# ---- CLI ------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="line config YAML (see configs/line-example.yaml)")
    p.add_argument("--frames", type=int, default=None, help="stop after N judged frames")
    p.add_argument("--product", default=None, help="override the config's initial product")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, frames=args.frames, product=args.product, log_level=args.log_level)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    d = Daemon(cfg)
    code = d.run()
    print(f"stopped ({d.stop_reason}): {d.judged} frames judged, drops {d._drops().model_dump()}", flush=True)
    return code
