"""The preview topic: downscaled JPEGs of judged frames for a live view (`agpt view`), never a cost nobody asked for.

    gate = attach_preview(publisher, cfg)   # PreviewGate(publisher.topic("preview"), cfg.preview_fps, ...),
                                            # publisher.on_subscription = gate.subscription (the XPUB says who
                                            # listens), gate.start()
    ... after each published result (the inspection loop): gate.offer(camera, frame_id, image, capture_time, reject)
    gate.stop()

Off when nobody subscribes: the publisher's XPUB (XPUB_VERBOSE) hands every subscription message to
subscription(); previews are made only while a subscription to exactly `<prefix>.preview` exists. ZeroMQ
passes an unsubscribe (also the one a disconnect implies) only when the last subscriber of that topic has
gone, so "on after a subscribe, off after the unsubscribe" follows the subscriber count without counting.
A wildcard subscriber (`""` or `<prefix>.`) does not turn previews on: `agpt subscribe` and line
controllers get no JPEGs they did not ask for (they do see them while a view has previews on).

Rate-limited per camera: at most `fps` previews a second, plus at most `fps` a second for rejected frames
(so the view can show the last rejects with their picture); every other frame costs one dict lookup.

The loop never waits: offer() only keeps a reference to the frame in a one-per-camera slot (a newer frame
replaces one not yet encoded, counted in `replaced`); this module's own thread downscales, encodes and
hands the JPEG to the publisher, whose full queue is counted in `dropped` (never in drops.publish).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.line.messages import PreviewHeader

log = logging.getLogger("agpt.preview")


def encode_preview(image: np.ndarray, max_side: int, quality: int) -> tuple[bytes, int, int]:
    """BGR (or grey) frame -> JPEG bytes, width, height; scaled down (INTER_AREA) so the longer side is <= max_side."""
    import cv2

    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s < 1:
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), image.shape[1], image.shape[0]


@dataclass
class _Pending:
    frame_id: int
    image: np.ndarray
    capture_time: float
    reject: bool


class PreviewGate:
    def __init__(
        self,
        topic: str,
        fps: float,
        max_side: int,
        publish: Callable[[PreviewHeader, bytes], bool],
        quality: int = 75,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.topic = topic.encode()
        self.interval = 1.0 / fps if fps > 0 else None  # None: previews are off for good (preview_fps: 0)
        self.max_side = max_side
        self.quality = quality
        self.publish = publish
        self.clock = clock
        self._subscribed = False
        self._last: dict[tuple[str, bool], float] = {}  # (camera, reject) -> clock of the last preview taken
        self._pending: dict[str, _Pending] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        # counters (status, bench): offered = frames that passed the gate
        self.offered = 0
        self.sent = 0
        self.replaced = 0  # a newer frame of the same camera came before this one was encoded
        self.dropped = 0  # the publisher's queue was full, or encoding failed
        self.encode_ms = 0.0  # total, for the mean

    # -- the XPUB's subscriptions (publisher thread) --

    def subscription(self, msg: bytes) -> None:
        if msg[1:] != self.topic:
            return
        if msg[:1] == b"\x01":
            self._subscribed = True
        elif msg[:1] == b"\x00":
            self._subscribed = False
            with self._cond:  # nobody listens: what is waiting would go nowhere
                self._pending.clear()

    @property
    def active(self) -> bool:
        return self._subscribed and self.interval is not None

    # -- the inspection loop --

    def want(self, camera: str, reject: bool = False) -> bool:
        """True (and the camera's slot taken) when this frame should become a preview now."""
        if not self.active:
            return False
        now = self.clock()
        for key in ((camera, True), (camera, False)) if reject else ((camera, False),):
            last = self._last.get(key)
            if last is None or now - last >= self.interval:
                self._last[key] = now
                return True
        return False

    def offer(self, camera: str, frame_id: int, image: np.ndarray, capture_time: float, reject: bool = False) -> bool:
        """Cheap: a gate check and, when it passes, a reference kept for the encoder thread."""
        if not self.want(camera, reject):
            return False
        with self._cond:
            old = self._pending.get(camera)
            if old is not None:
                self.replaced += 1
                reject = reject or old.reject
            self._pending[camera] = _Pending(frame_id, image, capture_time, reject)
            self.offered += 1
            self._cond.notify()
        return True

    # -- the encoder thread --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="preview", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def encode_one(self, camera: str, p: _Pending) -> None:
        t0 = time.perf_counter()
        try:
            jpeg, w, h = encode_preview(p.image, self.max_side, self.quality)
        except Exception as e:
            self.dropped += 1
            log.warning("preview of %s frame %d not encoded: %s", camera, p.frame_id, e)
            return
        self.encode_ms += (time.perf_counter() - t0) * 1e3
        header = PreviewHeader(
            frame_id=p.frame_id,
            camera=camera,
            capture_time=p.capture_time,
            publish_time=time.time(),
            width=w,
            height=h,
            frame_width=p.image.shape[1],
            frame_height=p.image.shape[0],
            reject=p.reject,
        )
        if self.publish(header, jpeg):
            self.sent += 1
        else:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                camera = next(iter(self._pending))
                p = self._pending.pop(camera)
            self.encode_one(camera, p)

    def stats(self) -> dict:
        return {
            "active": self.active,
            "offered": self.offered,
            "sent": self.sent,
            "replaced": self.replaced,
            "dropped": self.dropped,
            "encode_ms_mean": round(self.encode_ms / self.sent, 3) if self.sent else None,
        }


def attach_preview(publisher, cfg) -> PreviewGate:
    """The daemon's gate: fed by its publisher's subscriptions, publishing on <prefix>.preview, started."""
    gate = PreviewGate(publisher.topic("preview"), cfg.preview_fps, cfg.preview_max_side, publisher.publish_preview,
                       quality=cfg.preview_quality)  # fmt: skip
    publisher.on_subscription = gate.subscription
    gate.start()
    return gate
