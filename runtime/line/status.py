"""The station's state as one Status message: counters per camera and summed, each sink's link, the heartbeat
that also feeds systemd's watchdog."""

from __future__ import annotations

import time
from typing import Any

from runtime.line import watchdog
from runtime.line.lanes import Lane
from runtime.line.messages import CameraStatus, Drops, SinkStats, Status


def drops(station: Any, lane: Lane | None = None) -> Drops:
    """One camera's counters, or (lane None) the sums over the cameras."""
    pub = station.publisher
    lanes = station.lanes if lane is None else [lane]
    cams = [l.camera for l in lanes if l.camera is not None]
    return Drops(
        queue=sum(c.dropped for c in cams),
        camera_bad=sum(c.bad_frames for c in cams),
        paused=sum(l.paused_drops for l in lanes),
        failed=sum(l.failed for l in lanes),
        publish=pub.drops if pub else 0,
        untriggered=sum(station.triggers.untriggered[l.name] for l in lanes),
    )


def camera_status(station: Any, lane: Lane) -> CameraStatus:
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
        drops=drops(station, lane),
        golden=lane.golden,
    )


def sink_stats(station: Any) -> dict[str, SinkStats]:
    """Every sink's counters, and the view's preview beside them: what it could not send is counted in the status
    like any sink's drops (it has no link of its own: nobody watching is not an outage)."""
    out = station.sinks.stats()
    preview = getattr(station, "preview", None)
    if preview is not None:
        p = preview.stats()
        out["preview"] = SinkStats(delivered=p["sent"], dropped=p["dropped"])
    return out


def status(station: Any, final: bool = False) -> Status:
    s = station
    cams = [camera_status(s, l) for l in s.lanes]
    first = cams[0]
    return Status(
        time=time.time(),
        uptime_s=round(time.monotonic() - s.started, 3) if s.started else 0.0,
        fps=round(sum(l.fps() for l in s.lanes), 3),
        queue_depth=sum(c.queue_depth for c in cams),
        drops=drops(s),
        product=first.product,
        bank_id=first.bank_id,
        camera=first.name,
        camera_state=first.camera_state,
        frames_captured=sum(c.frames_captured for c in cams),
        frames_judged=s.judged,
        results_published=s.publisher.last_seq("result") if s.publisher else 0,
        truth_frames=s.truth_frames,
        accuracy=(s.truth_correct / s.truth_frames) if s.truth_frames else None,
        paused=s.paused.is_set(),
        errors=s.errors,
        final=final,
        cameras=cams,
        sinks=sink_stats(s),
        golden=first.golden,
    )


class Heartbeat:
    """The publisher's once-a-second status; also pings systemd's watchdog while the loop makes progress
    (a loop stuck inside a frame stops the pings even though this thread still runs), never before READY."""

    def __init__(self, station: Any):
        self.s = station
        self.ready = False
        self._ticks_at_beat = -1

    def __call__(self) -> Status:
        st = status(self.s)
        ticks = self.s.loop.ticks
        if self.ready and ticks != self._ticks_at_beat:
            self._ticks_at_beat = ticks
            watchdog.notify(watchdog.WATCHDOG)
            watchdog.notify(watchdog.status_line(f"{st.product}@{st.bank_id} fps {st.fps:.1f} judged {st.frames_judged}"))
        return st
