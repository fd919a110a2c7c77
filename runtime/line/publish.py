"""The results socket: ZeroMQ XPUB that never blocks the line.

One thread owns the socket (ZeroMQ sockets are not thread-safe). Anyone may call publish_*(): the message
is numbered (per-topic `seq`) and put on a bounded in-process queue; a full queue drops the message and
counts it (drops.publish). The thread sends with NOBLOCK under SNDHWM: a slow subscriber loses messages
(ZeroMQ drops them at its high-water mark and it sees a `seq` gap), the daemon never waits for it.

Late joiners: the socket is an XPUB with XPUB_VERBOSE, so every new subscription reaches this thread;
when one covers `<prefix>.status` the last status is re-sent at once (a last-value cache for one topic;
other status subscribers see an extra, identical status, which is harmless). Every subscription message
also goes to `on_subscription` (runtime/line/preview.py turns previews on and off with it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import zmq
from pydantic import BaseModel

from runtime.line.messages import Event, PreviewHeader, ResultHeader, Status

log = logging.getLogger("agpt.publish")


def apply_socket_limits(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # a peer sending more is disconnected
    sock.setsockopt(zmq.LINGER, 0)


def apply_curve_server(sock: zmq.Socket, secret_key_file) -> None:
    from zmq import auth as zauth

    public, secret = zauth.load_certificate(str(secret_key_file))
    if secret is None:
        from runtime.errors import AgptError

        raise AgptError(f"{secret_key_file}: holds no secret key (use the NAME.key_secret file)")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_curve_client(sock: zmq.Socket, curve: dict) -> None:
    """curve: {"server_public_key": path to server.key, "client_secret_key": path to client.key_secret}; without
    a client key a throwaway identity is used (enough for a daemon that accepts any CURVE client)."""
    from zmq import auth as zauth

    server_public, _ = zauth.load_certificate(str(curve["server_public_key"]))
    if curve.get("client_secret_key"):
        public, secret = zauth.load_certificate(str(curve["client_secret_key"]))
        if secret is None:
            raise ValueError(f"{curve['client_secret_key']} holds no secret key")
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret


def bound_socket(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    max_message_bytes: int,
    curve_secret_key=None,
    options: dict[int, int] | None = None,
) -> zmq.Socket:
    """A socket with the limits, options and CURVE applied, bound to endpoint. On any failure (a port in use,
    a bad key) the socket is closed before the error goes up: a socket left open makes ctx.term() wait forever."""
    sock = ctx.socket(kind)
    try:
        apply_socket_limits(sock, max_message_bytes)
        for opt, value in (options or {}).items():
            sock.setsockopt(opt, value)
        if curve_secret_key is not None:
            apply_curve_server(sock, curve_secret_key)
        sock.bind(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


class Publisher:
    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        prefix: str,
        sndhwm: int = 100,
        max_message_bytes: int = 1 << 20,
        heartbeat_s: float = 1.0,
        status_fn: Callable[[], Status] | None = None,
        curve_secret_key=None,
        queue_size: int = 256,
    ):
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.status_fn = status_fn
        # XPUB_VERBOSE: see every subscription, for the late-joiner status
        self.sock = bound_socket(
            ctx, zmq.XPUB, endpoint, max_message_bytes, curve_secret_key, {zmq.SNDHWM: sndhwm, zmq.XPUB_VERBOSE: 1}
        )
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.out: queue.Queue = queue.Queue(queue_size)
        self.drops = 0  # results, events and statuses that never left: our queue full, or the send failed
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        self._last_status: tuple[bytes, bytes] | None = None
        self._resend_due: float | None = None  # a late joiner is waiting for the last status
        self._last_resend = -1e9
        self.resend_interval_s = 0.1  # flapping subscribers cannot turn the cache into a status flood
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # called on the socket thread with each raw XPUB subscription message (b"\x01topic" / b"\x00topic")
        self.on_subscription: Callable[[bytes], None] | None = None

    def topic(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    # -- producers (any thread) --

    def _enqueue(self, kind: str, model: BaseModel, extra: list[bytes], count_drop: bool = True) -> bool:
        with self._seq_lock:  # numbered before queuing: our own drops show up as seq gaps too
            n = self._seq.get(kind, 0) + 1
            self._seq[kind] = n
            model.seq = n
            try:
                self.out.put_nowait((kind, model, extra))
                return True
            except queue.Full:
                self.drops += count_drop
                return False

    def last_seq(self, kind: str) -> int:
        return self._seq.get(kind, 0)

    def publish_result(self, header: ResultHeader, mask_png: bytes) -> bool:
        return self._enqueue("result", header, [mask_png])

    def publish_event(self, kind: str, detail: dict | None = None) -> bool:
        return self._enqueue("event", Event(time=time.time(), kind=kind, detail=detail or {}), [])

    def publish_status(self, status: Status) -> bool:
        return self._enqueue("status", status, [])

    def publish_preview(self, header: PreviewHeader, jpeg: bytes) -> bool:
        """A preview the queue has no room for is the preview's own loss (PreviewGate counts it), not drops.publish."""
        return self._enqueue("preview", header, [jpeg], count_drop=False)

    # -- the socket thread --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self, final_status: Status | None = None, flush_s: float = 1.0) -> None:
        """Send what is queued (and a final status), wait up to flush_s for it to leave, close."""
        if final_status is not None:
            self.publish_status(final_status)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(flush_s + 2.0)
        self.sock.close(linger=int(flush_s * 1000))

    def _send(self, kind: str, model: BaseModel, extra: list[bytes]) -> None:
        frames = [self.topic(kind).encode(), model.model_dump_json().encode(), *extra]
        if kind == "status":
            self._last_status = (frames[0], frames[1])
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # only with XPUB_NODROP; kept for safety
            self.drops += 1
        except zmq.ZMQError as e:
            self.drops += 1
            log.warning("publish failed: %s", e)

    def _subscriptions(self) -> None:
        status_topic = self.topic("status").encode()
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if msg[:1] == b"\x01" and status_topic.startswith(msg[1:]) and self._resend_due is None:
                self._resend_due = max(time.monotonic(), self._last_resend + self.resend_interval_s)
            if self.on_subscription is not None:
                try:
                    self.on_subscription(msg)
                except Exception:
                    log.exception("subscription callback failed")

    def _resend_status(self) -> None:
        """Re-send the last status for new subscribers, at most once per resend_interval_s."""
        if self._resend_due is None or time.monotonic() < self._resend_due or self._last_status is None:
            return
        self._resend_due = None
        self._last_resend = time.monotonic()
        try:
            self.sock.send_multipart(list(self._last_status), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _run(self) -> None:
        next_beat = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            try:
                now = time.monotonic()
                if not stopping and self.status_fn is not None and now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    try:
                        self.publish_status(self.status_fn())
                    except Exception:
                        log.exception("status callback failed")
                self._subscriptions()
                self._resend_status()
                # without a status callback there is no beat to wait for: wait on the queue, never spin on it
                until_beat = next_beat - time.monotonic() if self.status_fn is not None else 0.05
                timeout = 0.0 if stopping else max(0.0, min(0.05, until_beat))
                try:
                    item = self.out.get(timeout=timeout) if timeout > 0 else self.out.get_nowait()
                except queue.Empty:
                    if stopping:
                        return
                    continue
                self._send(*item)
            except Exception:  # never let the publisher thread die
                log.exception("publisher loop error")
                time.sleep(0.05)
