"""What the view knows about the line, built from the daemon's messages, and the messages it pushes to browsers.

No sockets here (runtime/tools/view/link.py owns them): on_result / on_preview / on_status / on_event take
parsed daemon messages and return the browser messages they cause (JSON-ready dicts):

  {"t": "result", "camera", "h": ResultHeader}                    every result (verdict, counters, answer)
  {"t": "frame",  "camera", "frame_id", "jpeg", "mask", "h", "p"}  a preview, with its own result's mask (base64)
  {"t": "reject", "r": {id, camera, frame_id, h, mask, jpeg}}     a rejected frame (again once its picture comes)
  {"t": "status", "s": Status} / {"t": "event", "e": Event}

A preview is matched with the result of the same camera and frame_id (the daemon publishes the result
first), so the overlay is always the map of the frame on screen.
"""

from __future__ import annotations

import base64
import collections
import itertools
import time
from dataclasses import dataclass, field

from runtime.line.messages import Event, PreviewHeader, ResultHeader, Status

KEEP_RESULTS = 256  # per camera: results waiting for their preview (5/s previews vs ~100 results/s)


def b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data else None


@dataclass
class CameraView:
    name: str
    results: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # frame_id -> (header dict, png)
    last_result: dict | None = None
    last_frame: dict | None = None  # the last "frame" message (what a new browser sees first)
    last_jpeg: bytes | None = None
    received: int = 0


@dataclass
class Reject:
    id: int
    camera: str
    frame_id: int
    header: dict
    mask: bytes | None
    jpeg: bytes | None = None

    def message(self) -> dict:
        return {"t": "reject", "r": self.public(images=True)}

    def public(self, images: bool = False) -> dict:
        d = {"id": self.id, "camera": self.camera, "frame_id": self.frame_id, "h": self.header, "has_jpeg": self.jpeg is not None}
        if images:
            d.update(mask=b64(self.mask), jpeg=b64(self.jpeg))
        return d


class ViewState:
    def __init__(self, rejects: int = 12):
        self.cameras: dict[str, CameraView] = {}
        self.status: dict | None = None
        self.events: collections.deque = collections.deque(maxlen=50)
        self.rejects: collections.deque[Reject] = collections.deque(maxlen=rejects)
        self._ids = itertools.count(1)
        self.previews = 0
        self.unmatched_previews = 0  # previews whose result never arrived (lost, or it came too late)
        self.started = time.time()

    def camera(self, name: str) -> CameraView:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = CameraView(name)
        return cam

    def on_result(self, h: ResultHeader, png: bytes) -> list[dict]:
        cam = self.camera(h.camera)
        d = h.model_dump(mode="json")
        cam.received += 1
        cam.last_result = d
        cam.results[h.frame_id] = (d, png)
        while len(cam.results) > KEEP_RESULTS:
            cam.results.popitem(last=False)
        out = [{"t": "result", "camera": h.camera, "h": d}]
        if h.verdict:
            r = Reject(next(self._ids), h.camera, h.frame_id, d, png or None)
            self.rejects.append(r)
            out.append(r.message())
        return out

    def add_archived(self, header: dict, jpeg: bytes | None, mask: bytes | None) -> None:
        """A reject from the archive (runtime/tools/view/history.py), older than every live one."""
        self.rejects.append(Reject(next(self._ids), header["camera"], header["frame_id"], header, mask, jpeg))

    def on_preview(self, p: PreviewHeader, jpeg: bytes) -> list[dict]:
        cam = self.camera(p.camera)
        self.previews += 1
        hit = cam.results.get(p.frame_id)
        if hit is None:
            self.unmatched_previews += 1
        h, png = hit if hit is not None else (None, None)
        msg = {
            "t": "frame",
            "camera": p.camera,
            "frame_id": p.frame_id,
            "jpeg": b64(jpeg),
            "mask": b64(png),
            "h": h,
            "p": p.model_dump(mode="json"),
        }
        cam.last_frame, cam.last_jpeg = msg, jpeg
        out = [msg]
        for r in self.rejects:
            if r.camera == p.camera and r.frame_id == p.frame_id and r.jpeg is None:
                r.jpeg = jpeg
                out.append(r.message())
        return out

    def on_status(self, s: Status) -> list[dict]:
        self.status = s.model_dump(mode="json")
        for c in s.cameras:
            self.camera(c.name)
        return [{"t": "status", "s": self.status}]

    def on_event(self, e: Event) -> list[dict]:
        d = e.model_dump(mode="json")
        self.events.append(d)
        return [{"t": "event", "e": d}]

    def reject(self, rid: int) -> Reject | None:
        return next((r for r in self.rejects if r.id == rid), None)

    def snapshot(self, images: bool = True) -> dict:
        """What a browser needs on connect (and GET /api/state without the images)."""
        return {
            "status": self.status,
            "cameras": {
                n: {
                    "last_result": c.last_result,
                    "received": c.received,
                    "frame": c.last_frame if images else None,
                    "has_frame": c.last_frame is not None,
                }
                for n, c in self.cameras.items()
            },
            "rejects": [r.public(images) for r in self.rejects],
            "events": list(self.events),
            "previews": self.previews,
        }
