"""Which part (and lot) is in front of a camera, as the line controller's set_part requests say.

A part is stamped by capture time, not by when the result is published: a frame captured before the
set_part arrived (still in the queue or being judged) keeps the part it was captured with. The tracker keeps
the last few changes per camera; set on the control thread, read on the loop (one deque append / a scan of
at most `keep` entries, no lock needed under the GIL).
"""

from __future__ import annotations

import collections
import time


class PartTracker:
    def __init__(self, keep: int = 16):
        self._changes: collections.deque[tuple[float, str | None, str | None]] = collections.deque(maxlen=keep)

    def set(self, part_id: str | None, lot: str | None, since: float | None = None) -> None:
        """From `since` (unix time; default now) on, frames show this part; None, None: no part known."""
        self._changes.append((time.time() if since is None else since, part_id, lot))

    def at(self, capture_time: float) -> tuple[str | None, str | None]:
        """(part_id, lot) for a frame captured at this time."""
        for since, part_id, lot in reversed(self._changes):
            if since <= capture_time:
                return part_id, lot
        return None, None

    @property
    def current(self) -> tuple[str | None, str | None]:
        return self._changes[-1][1:] if self._changes else (None, None)
