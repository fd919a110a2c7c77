"""The inspection loop: ready frames -> inspector.judge / judge_batch -> results, and tasks between frames.

It runs on its own thread and is the only one that touches the inspector and reads the packs, so a swap
(a task queued by the command handlers) always lands between two frames, never inside one. Every round takes
the ready frames, at most one per camera (max_batch bounds it), and judges them: one camera's alone, several
cameras' as one batch; a batch that fails is judged again frame by frame, so a bad frame fails only itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from runtime.errors import AgptError
from runtime.line import trigger
from runtime.line.camera import Frame
from runtime.line.lanes import KeptFrame, Lane
from runtime.line.results import make_result
from runtime.pipeline.products import ProductPack
from runtime.sinks.base import SinkResult

log = logging.getLogger("agpt.daemon")


class InspectionLoop:
    def __init__(self, station: Any):
        """station: the Daemon, which owns the lanes, slots, inspector, publisher, sinks and counters."""
        self.s = station
        self._tasks: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._tasks_lock = threading.Lock()
        self._done_accepting = False
        self.ticks = 0  # advanced by every iteration: the systemd watchdog's proof of life
        self.batch_retries = 0  # batches judged again frame by frame after judge_batch raised
        self.done = threading.Event()

    # ---- tasks between frames ---------------------------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the loop thread between two frames (batches); the Future carries its result."""
        fut: Future = Future()
        with self._tasks_lock:
            if self._done_accepting:
                fut.set_exception(AgptError("daemon stopping"))
                return fut
            self._tasks.put((fn, fut))
        self.s.wake()
        return fut

    def run_tasks(self) -> None:
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

    # ---- the thread -------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.frames()
        except BaseException:
            log.exception("inspection loop crashed")
            self.s.request_stop("loop_error")
        finally:
            with self._tasks_lock:
                self._done_accepting = True
            while True:  # nobody will run these now
                try:
                    _, fut = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(AgptError("daemon stopping"))
            self.done.set()

    def _all_ended(self) -> bool:
        return all(l.camera.state == "ended" and not self.s.slots.full(l.index) for l in self.s.lanes)

    def _paused_drop(self, cam: int, frame: Frame) -> None:
        lane = self.s.lanes[cam]
        lane.last_frame_id = frame.frame_id
        lane.paused_drops += 1

    def frames(self) -> None:
        """While paused, wait sources keep their frame for the resume and live cameras' frames are counted as
        paused drops, also for frames a take() returned just as the pause came."""
        s = self.s
        slots, cfg = s.slots, s.cfg
        live = {l.index for l in s.lanes if l.cfg.when_full != "wait"}
        held: list[tuple[int, Frame]] = []  # wait sources' frames taken just as a pause came: judged after the resume
        while not s.stopping.is_set():
            self.ticks += 1
            self.run_tasks()
            trigger.tick(s)  # triggers no frame can serve any more: their failure events
            if s.paused.is_set():
                if not live:
                    s.stopping.wait(0.05)
                for cam, frame in slots.take(None, timeout=0.1, only=live) if live else []:
                    self._paused_drop(cam, frame)
                continue
            limit = s.max_batch
            if cfg.frames is not None:  # --frames N judges N frames, not N rounded up to a whole batch
                limit = min(limit, max(cfg.frames - s.judged, 1))
            ready, held = (held, []) if held else (trigger.admit(s, slots.take(limit, timeout=0.1)), [])
            if not ready:
                if self._all_ended():
                    s.request_stop("camera_end")
                continue
            if s.paused.is_set():
                for cam, frame in ready:
                    if cam in live:
                        self._paused_drop(cam, frame)
                    else:
                        held.append((cam, frame))
                continue
            self.inspect_batch(ready)
            if cfg.frames is not None and s.judged >= cfg.frames:
                s.request_stop("frames")

    # ---- judging ----------------------------------------------------------------------------------------------

    def judge_failed(self, lane: Lane, frame: Frame, e: BaseException, stage: str = "judge") -> None:
        s = self.s
        lane.failed += 1
        s.errors += 1
        if s.errors <= 3:  # a model failing on every frame must not flood the log
            log.error("judging frame %d of %s failed", frame.frame_id, lane.name, exc_info=e)
        elif s.errors % 100 == 0:
            log.warning("judging keeps failing (%d errors so far): %s: %s", s.errors, type(e).__name__, e)
        detail = {"frame_id": frame.frame_id, "stage": stage, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        detail["camera"] = lane.name
        if frame.part_id is not None:  # a triggered part's frame: its error result on OPC UA
            detail["part_id"] = frame.part_id
        s.event("judge_error", detail)

    def inspect(self, lane: Lane, frame: Frame, pack: ProductPack | None = None) -> None:
        """One frame alone: judge and publish it, or report why it failed."""
        pack = lane.pack if pack is None else pack  # one reference for the whole frame: a swap cannot land inside it
        x = frame.model_input
        if isinstance(x, Exception):  # preprocessing on the camera's thread failed
            self.judge_failed(lane, frame, x)
            return
        t0 = time.monotonic()
        try:
            j = self.s.inspector.judge(x, pack)
        except Exception as e:
            self.judge_failed(lane, frame, e)
            return
        self.publish_or_fail(lane, frame, pack, j, t0, time.monotonic())

    def inspect_batch(self, ready: list[tuple[int, Frame]]) -> None:
        """Frames of several cameras: one judge_batch; if it raises, each frame again alone (only the bad one fails)."""
        todo = []
        for cam, frame in ready:
            lane = self.s.lanes[cam]
            lane.last_frame_id = frame.frame_id
            if isinstance(frame.model_input, Exception):  # preprocessing on the camera's thread failed
                self.judge_failed(lane, frame, frame.model_input)
            else:
                todo.append((lane, frame, lane.pack))  # each camera's pack read once for this batch
        if not todo:
            return
        judge_batch = getattr(self.s.inspector, "judge_batch", None)
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
                self.publish_or_fail(lane, frame, pack, j, t0, t1, len(todo))
            return
        for lane, frame, pack in todo:
            self.inspect(lane, frame, pack)

    def publish_or_fail(self, lane: Lane, frame: Frame, pack: ProductPack, j: Any, t0: float, t1: float, batch: int = 1) -> None:
        """A judgement the result header refuses (a malformed value) fails its own frame, never the loop."""
        try:
            self.publish(lane, frame, pack, j, t0, t1, batch)
        except Exception as e:
            self.judge_failed(lane, frame, e, stage="result")

    def publish(self, lane: Lane, frame: Frame, pack: ProductPack, j: Any, t0: float, t1: float, batch: int = 1) -> None:
        s = self.s
        header, png = make_result(frame, pack, j, t0, t1, prefix=s.cfg.topic_prefix, inspector=s.inspector,
                                  drops=s.drops(lane), batch=batch, part=trigger.part_of(lane, frame))  # fmt: skip
        s.publisher.publish_result(header, png)
        if s.preview is not None:  # a dict lookup unless a view subscribes; the JPEG is made on the preview thread
            s.preview.offer(frame.camera, frame.frame_id, frame.image, frame.capture_time, bool(header.verdict))
        s.sinks.result(SinkResult(header, png, frame.image, getattr(j, "map", None)))
        if header.truth is not None and header.truth.label is not None:
            s.truth_frames += 1
            s.truth_correct += int(header.verdict == header.truth.label)
        lane.judged += 1
        s.judged += 1
        lane.times.append(time.monotonic())
        s.kept.append(kept := KeptFrame(frame.frame_id, frame.camera, frame.image, j, pack, frame.capture_time))
        s.commands.feedback.keep(kept)  # rejected frames stay longer, for an operator's false-reject mark
