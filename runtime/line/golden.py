"""Golden checks: a pack's golden images judged before the pack judges its first line frame.

Plants run known-good and known-bad parts through a station at start-up and after a changeover and keep
the record. A pack carries its golden images (`agpt bank build --golden-good/--golden-bad`); the daemon
judges them with the pack at start and, at a changeover, on the inspection loop between two line frames,
before the swap: no line frame is ever judged with a pack whose check has not run. The `golden_check`
event carries each image's verdict and p_anomaly/score, status keeps the last check per camera, and the
config's `golden` decides what a misjudged image does: warn (the pack runs) or refuse (a changeover is
refused and the old pack keeps running; at start the daemon does not start).

Threads: `prepare` (decode + preprocess) runs off the loop (loader or start); `judge` runs where the
inspector is owned (the loop, or start before the loop exists).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runtime.errors import AgptError
from runtime.line.messages import GoldenCheck, GoldenResult
from runtime.pipeline.products import ProductPack


@dataclass(frozen=True)
class PreparedGolden:
    pack: ProductPack
    frames: list[Any]  # the inspector's Prepared inputs (or decoded images), one per golden image


def prepare(inspector: Any, pack: ProductPack) -> PreparedGolden:
    """Decode and preprocess the pack's golden images (thread-safe: runs off the loop)."""
    prep = getattr(inspector, "prepare", None)
    frames = []
    for g in pack.golden:
        img = g.image()
        frames.append(prep(img) if prep is not None else img)
    return PreparedGolden(pack, frames)


def judge(inspector: Any, prepared: PreparedGolden, when: str, mode: str, camera: str | None = None) -> GoldenCheck | None:
    """Judge the golden images with their pack (on the thread that owns the inspector); None without any."""
    pack = prepared.pack
    if not pack.golden:
        return None
    images = []
    for g, frame in zip(pack.golden, prepared.frames):
        try:
            j = inspector.judge(frame, pack)
            verdict = None if j.verdict is None else bool(j.verdict)
            p = getattr(j, "p_anomaly", None)
            images.append(
                GoldenResult(name=g.name, expected=g.label, verdict=verdict, p_anomaly=None if p is None else float(p),
                             score=float(j.score), judge=str(j.judge), ok=verdict is not None and verdict == g.expected)
            )  # fmt: skip
        except Exception as e:  # a golden image the pack cannot judge is a failed check, not a crashed loop
            images.append(
                GoldenResult(
                    name=g.name,
                    expected=g.label,
                    verdict=None,
                    score=0.0,
                    judge=f"error: {type(e).__name__}: {str(e)[:200]}",
                    ok=False,
                )
            )
    ok = all(r.ok for r in images)
    action = "passed" if ok else ("refused" if mode == "refuse" else "warned")
    return GoldenCheck(
        product=pack.name, bank_id=pack.bank_id, camera=camera, time=time.time(), when=when, ok=ok, action=action, images=images
    )


def summary(check: GoldenCheck) -> str:
    """One line: which golden images were misjudged."""
    bad = [
        f"{r.name} (expected {r.expected}, judged {'none' if r.verdict is None else ('bad' if r.verdict else 'good')})"
        for r in check.images
        if not r.ok
    ]
    return f"golden check of {check.product} ({check.bank_id}): " + (
        "all passed" if not bad else f"{len(bad)} of {len(check.images)} misjudged: " + ", ".join(bad)
    )


class GoldenRefused(AgptError):
    """A changeover (or start) refused by its golden check; the check rides along for the reply."""

    def __init__(self, check: GoldenCheck):
        super().__init__(summary(check) + "; golden: refuse kept the old pack")
        self.check = check
