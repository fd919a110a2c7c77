"""The view's side of the daemon: one SUB socket read on the event loop, and the browsers it pushes to.

The SUB subscribes to exactly <prefix>.result, .status and .event, and to <prefix>.preview only while at least
one browser is connected: the daemon makes previews only while someone subscribes to that topic
(runtime/line/preview.py), so a view nobody looks at costs the line nothing.

Browsers never slow the reader: each has a bounded queue; a full one loses its oldest message (counted),
the WebSocket task sends at the browser's pace.
"""

from __future__ import annotations

import asyncio
import json
import logging

import zmq
import zmq.asyncio

from runtime.line.messages import Event, PreviewHeader, ResultHeader, Status
from runtime.line.publish import apply_curve_client, apply_socket_limits
from runtime.tools.view.state import ViewState

log = logging.getLogger("agpt.view")


class Client:
    def __init__(self, size: int = 256):
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)
        self.dropped = 0

    def put(self, text: str) -> None:
        while True:
            try:
                self.queue.put_nowait(text)
                return
            except asyncio.QueueFull:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except asyncio.QueueEmpty:  # pragma: no cover - a single consumer cannot empty it in between
                    pass


class DaemonLink:
    def __init__(self, publish: str, prefix: str, state: ViewState, max_message_bytes: int = 64 << 20, curve: dict | None = None):
        self.publish = publish
        self.prefix = prefix
        self.state = state
        self.clients: set[Client] = set()
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        apply_socket_limits(self.sock, max_message_bytes)
        self.sock.setsockopt(zmq.RCVHWM, 2000)
        if curve:
            apply_curve_client(self.sock, curve)
        for kind in ("result", "status", "event"):
            self.sock.setsockopt(zmq.SUBSCRIBE, f"{prefix}.{kind}".encode())
        self.preview_topic = f"{prefix}.preview".encode()
        self.previewing = False
        self.sock.connect(publish)
        self.received = 0
        self.malformed = 0
        self._task: asyncio.Task | None = None

    # -- browsers --

    def add(self, client: Client) -> None:
        self.clients.add(client)
        self._preview(True)

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._preview(False)

    def _preview(self, on: bool) -> None:
        if on != self.previewing:
            self.previewing = on
            self.sock.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, self.preview_topic)

    def broadcast(self, messages: list[dict]) -> None:
        for m in messages:
            text = json.dumps(m, separators=(",", ":"))
            for c in self.clients:
                c.put(text)

    # -- the daemon --

    def handle(self, frames: list[bytes]) -> list[dict]:
        """One multipart message from the daemon -> the browser messages it causes (malformed: counted, none)."""
        kind = frames[0].decode(errors="replace").rsplit(".", 1)[-1]
        try:
            if kind == "result" and len(frames) >= 3:
                return self.state.on_result(ResultHeader.model_validate_json(frames[1]), frames[2])
            if kind == "preview" and len(frames) >= 3:
                return self.state.on_preview(PreviewHeader.model_validate_json(frames[1]), frames[2])
            if kind == "status":
                return self.state.on_status(Status.model_validate_json(frames[1]))
            if kind == "event":
                return self.state.on_event(Event.model_validate_json(frames[1]))
        except Exception as e:
            log.debug("malformed %s message: %s", kind, e)
        self.malformed += 1
        return []

    async def run(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            self.received += 1
            try:
                self.broadcast(self.handle(frames))
            except Exception:  # never let one message end the view's reader
                log.exception("view: handling a %s message failed", frames[0][:64])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="daemon-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.sock.close(linger=0)
        self.ctx.term()
