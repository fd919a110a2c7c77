"""One camera's own state on the line (a Lane), and what the line keeps of a judged frame (a KeptFrame).

A station with one camera is a line of one lane: nothing in the service branches on the camera count.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.line.camera import Camera
from runtime.line.config import CameraConfig
from runtime.line.parts import PartTracker
from runtime.pipeline.products import ProductPack


@dataclass
class KeptFrame:
    """A judged frame the line keeps for a while (keep_frames per camera): `ask` questions it, feedback adds it
    to a product's normal shots."""

    frame_id: int
    camera: str
    image: np.ndarray  # the camera frame
    judgement: Any  # the inspector's Judgement for it (its llm_context answers follow-up questions)
    pack: ProductPack  # the pack it was judged with
    capture_time: float


@dataclass(eq=False)
class Lane:
    """One camera: its capture thread, product pack, frame ids and counters."""

    index: int
    cfg: CameraConfig
    base_product: str  # the config's product for this camera (what a restart resumes from)
    camera: Camera | None = None
    pack: ProductPack | None = None
    judged: int = 0
    failed: int = 0
    paused_drops: int = 0
    last_frame_id: int = 0
    golden: Any = None  # the last GoldenCheck of its pack (messages.GoldenCheck), for status
    times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    parts: PartTracker = field(default_factory=PartTracker)  # set_part: the part in front of this camera

    @property
    def name(self) -> str:
        return self.cfg.name

    def fps(self) -> float:
        t = list(self.times)
        if len(t) < 2 or time.monotonic() - t[-1] > 5.0:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)
