"""The capture thread: a source's frames, checked and numbered, into the camera's slot (sources.py has the sources).

The capture thread never lets a bad camera take the daemon down: exceptions and failed reads close the
source and reopen it (exponential backoff, camera_lost / camera_back events); empty, corrupt or
odd-channel frames are counted and reported, gray and BGRA frames are converted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.line.config import LIVE_KINDS, CameraConfig
from runtime.line.sources import Source, make_source

log = logging.getLogger("agpt.camera")

MIN_SIDE = 8  # smaller frames are not a picture of a product: counted as bad


@dataclass
class Truth:
    label: bool | None  # True = anomalous
    mask: np.ndarray | None = None  # (H, W) in the camera frame, nonzero = defect


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray  # (H, W, 3) uint8 BGR
    camera: str
    capture_time: float  # time.time()
    capture_mono: float  # time.monotonic(), for latencies
    truth: Truth | None = None
    prepared: Any = None  # the model input made on the capture thread (Inspector.prepare), or why it failed
    part_id: str | None = None  # a triggered camera's frame: its trigger's part (runtime.line.trigger.admit)

    @property
    def model_input(self) -> Any:
        """What the inspector judges: the prepared input (or the exception that stopped it), else the image."""
        return self.image if self.prepared is None else self.prepared


# ---- frame checks ------------------------------------------------------------------------------------


def normalize_frame(img: Any) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 contiguous frame, '') or (None, reason). Gray -> BGR, BGRA -> BGR, 16-bit -> 8-bit."""
    if not isinstance(img, np.ndarray) or img.size == 0:
        return None, "empty frame"
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None, f"dtype {img.dtype}"
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # OpenCV's 4-channel order is BGRA: dropping alpha leaves BGR
    elif not (img.ndim == 3 and img.shape[2] == 3):
        return None, f"shape {img.shape}"
    if min(img.shape[:2]) < MIN_SIDE:
        return None, f"{img.shape[1]}x{img.shape[0]} too small"
    return np.ascontiguousarray(img), ""


# ---- the queue between capture and inspection ---------------------------------------------------------


class FrameQueue:
    """Bounded; when full, drop_oldest replaces the oldest frame (counted) and wait blocks the producer."""

    def __init__(self, maxsize: int = 2, when_full: str = "drop_oldest"):
        self.maxsize = maxsize
        self.when_full = when_full
        self.items: collections.deque[Frame] = collections.deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False  # no more frames will come (end of stream or stop)
        self._wakeups = 0

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        with self.cond:
            while self.when_full == "wait" and len(self.items) >= self.maxsize and not self.closed:
                if stop is not None and stop.is_set():
                    return False
                self.cond.wait(0.05)
            if self.closed:
                return False
            if len(self.items) >= self.maxsize:
                self.items.popleft()
                self.dropped += 1
            self.items.append(frame)
            self.cond.notify_all()
            return True

    def get(self, timeout: float) -> Frame | None:
        """The oldest frame, or None after `timeout`, on wake(), or when closed and empty."""
        with self.cond:
            seen = self._wakeups
            if not self.items and not self.closed:
                self.cond.wait_for(lambda: self.items or self.closed or self._wakeups != seen, timeout)
            if self.items:
                frame = self.items.popleft()
                self.cond.notify_all()
                return frame
            return None

    def wake(self) -> None:
        """Let a waiting get() return early (a control task is pending)."""
        with self.cond:
            self._wakeups += 1
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def __len__(self) -> int:
        return len(self.items)


# ---- the capture thread -------------------------------------------------------------------------------

EventFn = Callable[[str, dict], None]


class Camera:
    """Reads a source in its own thread into a FrameQueue; survives anything the source does."""

    def __init__(
        self,
        cfg: CameraConfig,
        source: Source | None = None,
        on_event: EventFn | None = None,
        queue=None,
        prepare: Callable[[np.ndarray], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], Any] | None = None,
    ):
        """queue: where frames go; the daemon gives each camera its slot of runtime.line.slots.CameraSlots (a
        SlotQueue), a Camera used on its own puts into a FrameQueue of two frames.
        clock / wait: the fps_limit pacing's time source and pause (time.monotonic and the stop event's wait),
        replaceable so a test can drive the pacing with a fake clock instead of sleeping.
        prepare: the frame's preprocessing, done here so it overlaps the models running on the inspection
        loop; its result (or the exception) rides on Frame.prepared."""
        self.cfg = cfg
        self.prepare = prepare
        self.name = cfg.name
        self.source = source if source is not None else make_source(cfg)
        self.queue = queue if queue is not None else FrameQueue(2, cfg.when_full)
        self.on_event = on_event or (lambda kind, detail: None)
        self.state = "opening"  # opening | open | lost | ended | stopped
        self.frame_id = 0
        self.bad_frames = 0
        self.reopens = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_bad_event = 0.0
        self._clock = clock
        self._wait = wait if wait is not None else self._stop.wait

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)  # a read stuck in a driver cannot be interrupted: the thread is a daemon
        if self.state != "ended":
            self.state = "stopped"

    def _event(self, kind: str, **detail) -> None:
        try:
            self.on_event(kind, {"camera": self.name, **detail})
        except Exception:  # an event consumer's bug must not stop the capture
            log.exception("camera event callback failed")

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.debug("camera close failed", exc_info=True)

    def _open(self) -> bool:
        try:
            self.source.open()
            return True
        except Exception as e:
            self._lost(f"open failed: {e}")
            return False

    def _lost(self, reason: str) -> None:
        if self.state != "lost":
            self._lost_since = time.monotonic()
            log.warning("camera %s lost: %s", self.name, reason)
            self._event("camera_lost", reason=str(reason)[:200])
        self.state = "lost"

    def _bad(self, reason: str) -> None:
        self.bad_frames += 1
        now = time.monotonic()
        if now - self._last_bad_event >= 1.0:  # at most one event a second, with the running count
            self._last_bad_event = now
            self._event("camera_bad_frame", reason=reason, count=self.bad_frames)

    def _run(self) -> None:
        backoff = self.cfg.reopen_backoff_s
        interval = 1.0 / self.cfg.fps_limit if self.cfg.fps_limit else 0.0
        next_due = 0.0
        opened = False
        while not self._stop.is_set():
            if not opened:
                opened = self._open()
                if not opened:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reopen_backoff_max_s)
                    continue
            try:
                ok, img, truth = self.source.read()
            except Exception as e:
                ok, img, truth = False, None, None
                reason = f"read raised {type(e).__name__}: {e}"
            else:
                reason = "read failed"
            if not ok:
                if getattr(self.source, "eof", False):
                    self.state = "ended"
                    self._event("camera_end", frames=self.frame_id)
                    self.queue.close()
                    return
                self._close_source()
                opened = False
                self._lost(reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_backoff_max_s)
                continue
            if self.state != "open":
                if self.state == "lost":
                    self.reopens += 1
                    down = time.monotonic() - getattr(self, "_lost_since", time.monotonic())
                    log.info("camera %s back after %.1f s", self.name, down)
                    self._event("camera_back", down_s=round(down, 3))
                self.state = "open"
            backoff = self.cfg.reopen_backoff_s
            frame, why = normalize_frame(img)
            if frame is None:
                self._bad(why)
                continue
            if interval:
                now = self._clock()
                if now < next_due:
                    if self.cfg.kind in LIVE_KINDS:  # keep draining the driver's buffer, pass only fresh frames
                        continue
                    self._wait(next_due - now)
                next_due = max(next_due + interval, self._clock())
            self.frame_id += 1
            t = truth if truth is None or isinstance(truth, Truth) else _as_truth(truth)
            f = Frame(self.frame_id, frame, self.name, time.time(), self._clock(), t)
            if self.prepare is not None:
                try:
                    f.prepared = self.prepare(frame)
                except Exception as e:  # judged (and reported) as this frame's failure by the loop
                    f.prepared = e
            if not self.queue.put(f, self._stop):
                break
        self._close_source()


def _as_truth(t: Any) -> Truth | None:
    """Accept (label, mask), a dict {label, mask}, or a bare label from a synthetic source."""
    if isinstance(t, dict):
        return Truth(t.get("label"), t.get("mask"))
    if isinstance(t, tuple):
        return Truth(t[0], t[1] if len(t) > 1 else None)
    return Truth(bool(t))
