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
        self.dropped = [0] * n_cameras
        self.taken = [0] * n_cameras

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

    def take(self, max_items: int | None = None, timeout: float | None = None) -> list[tuple[int, Any]]:
        """Wait until a camera has a frame, then take one frame from every ready camera (at most max_items).
        [] on timeout or once closed with nothing waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not any(self._full) and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._cond.wait(left)
            out = []
            limit = self.n if max_items is None else max_items
            for k in range(self.n):
                cam = (self._next + k) % self.n
                if self._full[cam] and len(out) < limit:
                    out.append((cam, self._items[cam]))
                    self._items[cam], self._full[cam] = None, False
                    self.taken[cam] += 1
            if out:
                self._next = (out[-1][0] + 1) % self.n
                self._cond.notify_all()
            return out

    def close(self) -> None:
        """Wake every waiter; later puts are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
