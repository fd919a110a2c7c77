"""The one interface every sink implements, and the queued worker most of them are built on.

The inspection loop hands each sink every result and event through `submit_*`, which never blocks and never
raises: a sink that is slow, down or broken drops what it cannot queue and counts it. The sink's own thread
does the slow part (a database write, a broker publish, an OPC UA variable update) and retries what it can.
What a sink could not deliver is counted in `stats()`, which the daemon puts into every status message and
the metrics, so an outage is visible, never silent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.line.messages import ResultHeader, SinkStats

log = logging.getLogger("agpt.sinks")


@dataclass(frozen=True)
class SinkResult:
    """One judged frame as every sink sees it. `image` is the camera frame (HxWx3 uint8, BGR, read-only: the
    same array the daemon keeps for `ask`, never copied per sink); `anomaly_map` the 224x224 float map or None.
    The part and lot are the header's (part_id, lot): one place, whatever set them (a trigger or set_part)."""

    header: ResultHeader
    mask_png: bytes
    image: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None


@dataclass(frozen=True)
class SinkEvent:
    kind: str
    detail: dict[str, Any]
    time: float


class Sink:
    """Base of every sink. Subclasses set `name` and override what they need."""

    name = "sink"

    def start(self) -> None:
        """Open connections and threads. Raising here refuses the daemon's start with a clear error."""

    def submit_result(self, result: SinkResult) -> None:
        """Called on the inspection loop for every published result: must not block, must not raise."""

    def submit_event(self, event: SinkEvent) -> None:
        """Called for every event the daemon publishes (changeover, camera lost, judge_error ...)."""

    def stats(self) -> SinkStats:
        return SinkStats()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within timeout, then close; what is left is counted as dropped."""


class QueuedSink(Sink):
    """A sink with one worker thread and a bounded queue: `submit_*` puts or drops (counted), the thread calls
    `handle_result` / `handle_event`. An exception there counts the item as dropped and is logged (rate-limited);
    subclasses that can retry (a reconnecting client) do so inside handle_* and raise only when they give up."""

    def __init__(self, max_queue: int = 1000, thread_name: str | None = None):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._delivered = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._thread_name = thread_name or f"sink-{self.name}"

    # ---- the loop's side: never blocks --------------------------------------------------------------

    def submit_result(self, result: SinkResult) -> None:
        self._put(("result", result))

    def submit_event(self, event: SinkEvent) -> None:
        self._put(("event", event))

    def _put(self, item: tuple[str, Any]) -> None:
        if self._stopping.is_set():
            self.count_dropped(1)
            return
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.count_dropped(1)

    # ---- counters ---------------------------------------------------------------------------------------

    def count_dropped(self, n: int = 1, error: str | None = None) -> None:
        with self._lock:
            self._dropped += n
            if error is not None:
                self._last_error = error[:300]

    def count_delivered(self, n: int = 1) -> None:
        with self._lock:
            self._delivered += n

    def connected(self) -> bool | None:
        return None

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(connected=self.connected(), queued=self._q.qsize(), delivered=self._delivered,
                             dropped=self._dropped, last_error=self._last_error)  # fmt: skip

    # ---- the worker ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def handle_result(self, result: SinkResult) -> None:
        raise NotImplementedError

    def handle_event(self, event: SinkEvent) -> None:
        """Events are optional for a sink: the default ignores them (not counted as delivered)."""

    def idle(self) -> None:
        """Called about every 0.2 s while the queue is empty (reconnects, retention ...)."""

    def close(self) -> None:
        """Called on the worker thread once the queue is flushed or the stop's time is up."""

    def _run(self) -> None:
        deadline: float | None = None
        while True:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self._stop_timeout
            if deadline is not None and (self._q.empty() or time.monotonic() > deadline):
                break
            try:
                kind, item = self._q.get(timeout=0.2)
            except queue.Empty:
                try:
                    self.idle()
                except Exception as e:
                    self._note_error(e)
                continue
            try:
                if kind == "result":
                    self.handle_result(item)
                    self.count_delivered()
                elif kind == "event":
                    self.handle_event(item)
            except Exception as e:
                self.count_dropped(1, f"{type(e).__name__}: {e}")
                self._note_error(e)
        left = self._q.qsize()
        if left:
            self.count_dropped(left, "stopped before these were delivered")
        try:
            self.close()
        except Exception as e:
            self._note_error(e)

    def _note_error(self, e: BaseException) -> None:
        self._errors += 1
        with self._lock:
            self._last_error = f"{type(e).__name__}: {str(e)[:300]}"
        if self._errors <= 3 or self._errors % 100 == 0:
            log.warning("sink %s: %s (%d errors so far)", self.name, self._last_error, self._errors)

    _stop_timeout = 5.0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_timeout = timeout
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout + 2.0)
