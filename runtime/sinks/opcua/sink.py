"""OpcuaSink: the daemon's results and events into the OPC UA variables, off the inspection loop.

The loop only queues (QueuedSink); this sink's worker writes each result into its camera's variables and,
every state_interval_s, the station state from daemon.status(). A trigger_failed event, or a judge_error
of a frame that served a trigger, is an error result for that part: Error, ErrorText, PartId, then the
counter, so each accepted Trigger moves ResultCounter exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.errors import AgptError
from runtime.sinks.base import QueuedSink, SinkEvent, SinkResult
from runtime.sinks.opcua.config import OpcuaConfig


class OpcuaSink(QueuedSink):
    name = "opcua"

    def __init__(self, cfg: OpcuaConfig, daemon: Any):
        super().__init__(max_queue=cfg.max_queue, thread_name="sink-opcua")
        self.cfg, self.daemon = cfg, daemon
        self.cameras = [(c.name, c.trigger) for c in daemon.cfg.camera_list]
        self.server = None
        self._next_state = 0.0
        self._error: dict[str, bool] = {name: False for name, _ in self.cameras}  # the camera's last frame failed

    def start(self) -> None:
        self.cfg.check_security("opcua")
        try:
            from runtime.sinks.opcua.server import OpcuaServer
        except ImportError as e:
            raise AgptError(f"opcua: needs the opcua extra (pip install 'anomalygpt-edge[opcua]'): {e}") from None
        self.server = OpcuaServer(self.cfg, self.cameras, self.daemon.handle)
        self.server.start()
        super().start()

    def connected(self) -> bool | None:
        return None if self.server is None else self.server.running

    def handle_result(self, result: SinkResult) -> None:
        h = result.header
        self.server.write_result(h)
        self._error[h.camera] = False
        self._maybe_state()

    def handle_event(self, event: SinkEvent) -> None:
        d = event.detail
        cam = d.get("camera") or self.cameras[0][0]
        if cam not in self._error:
            return
        if event.kind == "trigger_failed":
            self.server.write_error(cam, d.get("part_id"), f"trigger {d.get('reason')}: no frame judged for this part")
        elif event.kind == "judge_error":
            self._error[cam] = True
            if d.get("part_id") is not None:  # a triggered part whose frame failed: its error result
                self.server.write_error(cam, d.get("part_id"), f"judging failed: {d.get('error')}", d.get("frame_id"))
        if event.kind in ("camera_lost", "camera_back", "paused", "resumed", "changeover", "camera_end"):
            self._next_state = 0.0  # show the new state now, not at the next interval
        self._maybe_state()

    def idle(self) -> None:
        self._maybe_state()

    def _maybe_state(self) -> None:
        now = time.monotonic()
        if now < self._next_state or self.server is None or not self.server.running:
            return
        self._next_state = now + self.cfg.state_interval_s
        book = getattr(self.daemon, "triggers", None)
        pending = {name: book.n_pending(name) for name, _ in self.cameras} if book is not None else {}
        self.server.write_status(self.daemon.status(), pending, self._error)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
