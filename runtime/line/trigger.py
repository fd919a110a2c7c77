"""Triggered inspection: a camera judges one frame per trigger, and its result carries the trigger's part id.

A camera with `trigger: opcua|control` judges only frames a trigger asked for: Trigger(part_id) (the PLC's
OPC UA method, or the control channel's `trigger`) arms the camera, and the first frame captured after that
moment is judged as that part; its result carries the part id. Every other frame of that camera is counted
as drops.untriggered. A trigger no frame served in time (camera lost, trigger_timeout_s, judging paused,
the daemon stopping) becomes a `trigger_failed` event naming the part: an accepted trigger always ends in
exactly one result or one failure, never silence. A frame that serves a trigger and then fails to judge
gives the usual judge_error, with the part id in it.

The daemon calls: `handle` for the `trigger` command (control thread), `admit` on the frames a round of the
loop took and `part_of` for a result's part (loop thread), `tick` once per loop round (timeouts, lost
cameras), `fail_all` at shutdown. A free-running camera's part comes from set_part (runtime/line/parts.py);
a triggered frame's lot too (a lot spans many triggers).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

from runtime.line.config import CameraConfig
from runtime.line.messages import Reply, TriggerRequest

MAX_PENDING = 32  # per camera: a PLC firing triggers far faster than frames arrive is refused, not queued forever


@dataclass(frozen=True)
class PendingTrigger:
    camera: str
    part_id: str
    armed_mono: float  # frames captured at or after this serve it
    deadline: float  # monotonic
    armed_time: float  # unix time, for the event


class TriggerBook:
    """The pending triggers (FIFO) of each triggered camera, and its counters."""

    def __init__(self, cameras: list[CameraConfig]):
        self._lock = threading.Lock()
        self._cfg = {c.name: c for c in cameras}
        self.pending: dict[str, collections.deque[PendingTrigger]] = {
            c.name: collections.deque() for c in cameras if c.trigger != "none"
        }
        self.untriggered: dict[str, int] = {c.name: 0 for c in cameras}
        self.served: dict[str, int] = {c.name: 0 for c in cameras}
        self.failed: dict[str, int] = {c.name: 0 for c in cameras}

    def triggered(self, camera: str) -> bool:
        return camera in self.pending

    def n_pending(self, camera: str) -> int:
        with self._lock:
            return len(self.pending.get(camera, ()))

    # ---- commands (any thread) -------------------------------------------------------------------------

    def arm(self, camera: str, part_id: str, now: float | None = None) -> PendingTrigger:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self.pending[camera]
            if len(q) >= MAX_PENDING:
                raise OverflowError(f"camera {camera!r} has {len(q)} triggers waiting for frames")
            t = PendingTrigger(camera, part_id, now, now + self._cfg[camera].trigger_timeout_s, time.time())
            q.append(t)
            return t

    # ---- the loop's side ----------------------------------------------------------------------------------

    def claim(self, camera: str, capture_mono: float) -> tuple[bool, str | None]:
        """(judge this frame?, the trigger's part id). A triggered camera's frame is judged only when a pending
        trigger was armed before it was captured; that trigger is used up. Free-running cameras: (True, None)."""
        with self._lock:
            q = self.pending.get(camera)
            if q is None:
                return True, None
            if q and q[0].armed_mono <= capture_mono:
                t = q.popleft()
                self.served[camera] += 1
                return True, t.part_id
            self.untriggered[camera] += 1
            return False, None

    def take_failed(self, now: float, gone: set[str]) -> list[tuple[PendingTrigger, str]]:
        """Pending triggers that can no longer be served: past their deadline, or their camera is gone."""
        out = []
        with self._lock:
            for cam, q in self.pending.items():
                while q and (cam in gone or q[0].deadline <= now):
                    t = q.popleft()
                    out.append((t, "camera_lost" if cam in gone else "timeout"))
                    self.failed[cam] += 1
        return out

    def take_all(self) -> list[PendingTrigger]:
        with self._lock:
            out = [t for q in self.pending.values() for t in q]
            for cam, q in self.pending.items():
                self.failed[cam] += len(q)
                q.clear()
        return out


# ---- the daemon's hooks ----------------------------------------------------------------------------------------


def handle(daemon: Any, req: TriggerRequest) -> Reply:
    """The `trigger` command, answered at once on the caller's thread (it only arms the camera)."""
    book: TriggerBook = daemon.triggers
    names = [l.name for l in daemon.lanes]
    if req.camera is not None and req.camera not in names:
        return Reply(ok=False, error=f"no camera {req.camera!r} (cameras: {', '.join(names)})")
    triggered = [n for n in names if book.triggered(n)]
    camera = req.camera
    if camera is None:
        if len(triggered) != 1:
            what = "no camera is triggered (camera.trigger)" if not triggered else f"name the camera ({', '.join(triggered)})"
            return Reply(ok=False, error=f"trigger: {what}")
        camera = triggered[0]
    if not book.triggered(camera):
        return Reply(ok=False, error=f"camera {camera!r} is free running (trigger: none)")
    if daemon.stopping.is_set():
        return Reply(ok=False, error="daemon stopping")
    try:
        t = book.arm(camera, req.part_id)
    except OverflowError as e:
        return Reply(ok=False, error=str(e))
    daemon.wake()  # the loop's round notices a lost camera at once
    return Reply(ok=True, data={"camera": camera, "part_id": t.part_id, "pending": book.n_pending(camera),
                                "timeout_s": round(t.deadline - t.armed_mono, 3)})  # fmt: skip


def admit(daemon: Any, ready: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """The frames of a loop round that are judged; a triggered camera's frame is stamped with its trigger's
    part (frame.part_id), its unasked-for frames are dropped here (counted, and their frame id is passed)."""
    book: TriggerBook = daemon.triggers
    out = []
    for cam, frame in ready:
        lane = daemon.lanes[cam]
        judge, frame.part_id = book.claim(lane.name, frame.capture_mono)
        if judge:
            out.append((cam, frame))
        else:
            lane.last_frame_id = frame.frame_id
    return out


def part_of(lane: Any, frame: Any) -> tuple[str | None, str | None]:
    """(part_id, lot) a result carries: a triggered frame's trigger part (with set_part's lot), else set_part's."""
    part_id, lot = lane.parts.at(frame.capture_time)
    return (frame.part_id, lot) if frame.part_id is not None else (part_id, lot)


def tick(daemon: Any) -> None:
    """Once per loop round: triggers past their deadline, or on a lost camera, fail with an event."""
    book: TriggerBook = daemon.triggers
    if not book.pending:
        return
    gone = set()
    for lane in daemon.lanes:
        cam = lane.camera
        if book.triggered(lane.name) and cam is not None and cam.state in ("lost", "stopped", "ended"):
            if cam.state != "ended" or not daemon.slots.full(lane.index):
                gone.add(lane.name)
    for t, reason in book.take_failed(time.monotonic(), gone):
        _failed(daemon, t, reason)


def fail_all(daemon: Any, reason: str = "stopping") -> None:
    """At shutdown: every trigger still waiting gets its failure event before the publisher closes."""
    for t in daemon.triggers.take_all():
        _failed(daemon, t, reason)


def _failed(daemon: Any, t: PendingTrigger, reason: str) -> None:
    lane = daemon.lane(t.camera)
    daemon.event(
        "trigger_failed",
        {"camera": t.camera, "part_id": t.part_id, "reason": reason, "armed_time": t.armed_time,
         "waited_s": round(time.monotonic() - t.armed_mono, 3), "after_frame_id": lane.last_frame_id},
    )  # fmt: skip
