"""Every configured sink behind one call: the daemon hands a result or an event once, each sink queues it."""

from __future__ import annotations

import logging

from runtime.sinks.base import Sink, SinkEvent, SinkResult, SinkStats

log = logging.getLogger("agpt.sinks")


class Fanout:
    def __init__(self, sinks: list[Sink] | None = None):
        self.sinks = list(sinks or [])
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"two sinks share a name: {names}")

    def start(self) -> None:
        started = []
        try:
            for s in self.sinks:
                s.start()
                started.append(s)
        except BaseException:
            for s in reversed(started):
                s.stop(timeout=1.0)
            raise

    def result(self, r: SinkResult) -> None:
        for s in self.sinks:
            try:
                s.submit_result(r)
            except Exception:  # submit must not raise; a sink that does is a bug, never the line's problem
                log.exception("sink %s refused a result", s.name)

    def event(self, e: SinkEvent) -> None:
        for s in self.sinks:
            try:
                s.submit_event(e)
            except Exception:
                log.exception("sink %s refused an event", s.name)

    def stats(self) -> dict[str, SinkStats]:
        out = {}
        for s in self.sinks:
            try:
                out[s.name] = s.stats()
            except Exception as e:
                out[s.name] = SinkStats(last_error=f"stats failed: {type(e).__name__}: {e}")
        return out

    def stop(self, timeout: float = 5.0) -> None:
        for s in reversed(self.sinks):
            try:
                s.stop(timeout)
            except Exception:
                log.exception("sink %s did not stop cleanly", s.name)
