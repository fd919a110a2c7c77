"""Frames of several cameras into batches: one slot per camera, one batch from all cameras that are ready.

    slots = CameraSlots(n_cameras)
    # each camera's thread:   slots.put(cam, item)              (item: e.g. inspector.prepare(frame) + ids)
    # the inspection loop:    ready = slots.take(max_batch, timeout)   -> [(cam, item), ...]
    #                         inspector.judge_batch([...], [pack of each cam])

A slot holds one frame. put(block=False) replaces a waiting frame (a live camera: the newest frame wins,
the replaced one is counted in `dropped[cam]`); put(block=True) waits for the slot to be taken (a recorded
file: every frame is judged). take() returns at most one frame per camera, so a fast camera cannot crowd
out a slow one; with more cameras than max_batch the first camera served rotates (round robin).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class CameraSlots:
    def __init__(self, n_cameras: int):
        if n_cameras < 1:
            raise ValueError("at least one camera")
        self.n = n_cameras
        self._items: list[Any] = [None] * n_cameras
        self._full = [False] * n_cameras
        self._cond = threading.Condition()
        self._closed = False
        self._next = 0  # first camera considered by the next take (round robin)
        self._wakeups = 0
        self.dropped = [0] * n_cameras
        self.taken = [0] * n_cameras

    @property
    def closed(self) -> bool:
        return self._closed

    def full(self, cam: int) -> bool:
        """A frame of this camera is waiting."""
        return self._full[cam]

    def put(self, cam: int, item: Any, block: bool = False, timeout: float | None = None) -> bool:
        """Offer a camera's frame. False when closed, or when block=True and the slot stayed full past timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while block and self._full[cam] and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            if self._closed:
                return False
            if self._full[cam]:
                self.dropped[cam] += 1
            self._items[cam], self._full[cam] = item, True
            self._cond.notify_all()
            return True

    def take(self, max_items: int | None = None, timeout: float | None = None, only: Any = None) -> list[tuple[int, Any]]:
        """Wait until a camera has a frame, then take one frame from every ready camera (at most max_items).
        only: consider these cameras alone (the others' frames stay waiting).
        [] on timeout, on wake(), or once closed with nothing waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cams = range(self.n) if only is None else sorted(set(only))
        with self._cond:
            seen = self._wakeups
            while not any(self._full[c] for c in cams) and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._wakeups != seen:
                    return []
                self._cond.wait(left)
            out = []
            limit = self.n if max_items is None else max_items
            for k in range(self.n):
                cam = (self._next + k) % self.n
                if self._full[cam] and len(out) < limit and (only is None or cam in cams):
                    out.append((cam, self._items[cam]))
                    self._items[cam], self._full[cam] = None, False
                    self.taken[cam] += 1
            if out:
                self._next = (out[-1][0] + 1) % self.n
                self._cond.notify_all()
            return out

    def wake(self) -> None:
        """Let a waiting take() return early (the daemon has a control task to run)."""
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter; later puts are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SlotQueue:
    """One camera's side of CameraSlots, shaped like camera.FrameQueue (what runtime.line.camera.Camera puts into).

    The slot holds the Frame, with the input the camera's thread prepared (Frame.model_input; the exception
    when preprocessing failed: the loop counts it as that camera's failed frame).
    when_full 'wait' blocks until the loop took the waiting frame; 'drop_oldest' replaces it (counted).
    """

    def __init__(self, slots: CameraSlots, cam: int, when_full: str = "drop_oldest"):
        self.slots, self.cam, self.when_full = slots, cam, when_full
        self.closed = False  # this camera's stream ended or stopped

    @property
    def dropped(self) -> int:
        return self.slots.dropped[self.cam]

    def put(self, frame: Any, stop: threading.Event | None = None) -> bool:
        if self.closed:
            return False
        block = self.when_full == "wait"
        while True:
            # short waits: a stop or this camera's close is noticed within 50 ms
            if self.slots.put(self.cam, frame, block=block, timeout=0.05):
                return True
            if self.closed or self.slots.closed or (stop is not None and stop.is_set()):
                return False

    def close(self) -> None:
        self.closed = True

    def __len__(self) -> int:
        return int(self.slots.full(self.cam))
