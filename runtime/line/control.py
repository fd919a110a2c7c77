"""The control channel: a ZeroMQ ROUTER taking one JSON request per message, answering each with a Reply.

Clients use REQ (one request at a time) or DEALER (several in flight; send an `id` to match replies).
Every message gets exactly one reply: malformed JSON, unknown commands, wrong types, oversized bodies and
handler failures all become {ok: false, error}. A message over ZMQ_MAXMSGSIZE never reaches us: ZeroMQ
disconnects that peer. Slow commands (swap_bank, add_product, ask) return a Future from the handler and
are answered when it completes; the socket keeps serving others meanwhile.

Security: bound to 127.0.0.1 by default. With `curve` configured (see configs/line-example.yaml), a
zmq.auth ThreadAuthenticator admits only clients whose public key is in `authorized_clients`; others
get no connection at all. Make keys with:
    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'server'); zmq.auth.create_certificates('keys', 'client')"
(then move client.key into the authorized_clients folder; keep *.key_secret files private).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

import zmq

from runtime.line.messages import Reply, Request, RequestError, parse_request
from runtime.line.publish import apply_curve_client, apply_socket_limits, bound_socket

log = logging.getLogger("agpt.control")

SLOW_COMMANDS = ("swap_bank", "add_product", "ask")  # answered later, through a Future
Handler = Callable[[Request], "Reply | Future[Reply]"]


def start_authenticator(ctx: zmq.Context, authorized_clients) -> object:
    """One ZAP authenticator per context: CURVE clients must hold a key from the folder."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("agpt.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized_clients))
    return auth


class ControlServer:
    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        handler: Handler,
        max_message_bytes: int = 1 << 20,
        curve_secret_key=None,
    ):
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        # ROUTER_MANDATORY 0: a reply to a vanished client is dropped, not an error
        self.sock = bound_socket(
            ctx, zmq.ROUTER, endpoint, max_message_bytes, curve_secret_key, {zmq.ROUTER_MANDATORY: 0, zmq.SNDHWM: 1000}
        )
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests = 0
        self.errors = 0
        self.max_pending = 32  # slow commands in progress; more get "busy" instead of an unbounded backlog
        self._pending: list[tuple[list[bytes], str | int | None, Future]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.sock.close(linger=200)

    def _reply(self, envelope: list[bytes], reply: Reply) -> None:
        try:
            body = reply.model_dump_json().encode()
        except Exception as e:  # data that does not serialise is the handler's bug: still answer
            body = Reply(ok=False, id=reply.id, error=f"reply not serialisable: {type(e).__name__}").model_dump_json().encode()
        try:
            self.sock.send_multipart([*envelope, body], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.debug("reply dropped: %s", e)

    def handle_message(self, frames: list[bytes]) -> tuple[list[bytes], Reply | Future | None, str | int | None]:
        """Split the ROUTER envelope; parse and dispatch. Never raises."""
        identity, rest = frames[:1], frames[1:]
        # REQ clients put an empty delimiter before the body; DEALER clients may not.
        delim = [b""] if rest and rest[0] == b"" else []
        body = rest[len(delim) :]
        envelope = identity + delim
        if len(body) != 1:
            return envelope, Reply(ok=False, error=f"expected one JSON frame, got {len(body)}"), None
        try:
            req = parse_request(body[0], self.max_message_bytes)
        except RequestError as e:
            return envelope, Reply(ok=False, id=e.req_id, error=str(e)), e.req_id
        if req.cmd in SLOW_COMMANDS and len(self._pending) >= self.max_pending:
            return envelope, Reply(ok=False, error=f"busy: {len(self._pending)} requests in progress, retry later"), req.id
        try:
            out = self.handler(req)
        except Exception as e:
            log.exception("control handler failed on %s", req.cmd)
            out = Reply(ok=False, error=f"{req.cmd} failed: {type(e).__name__}: {str(e)[:200]}")
        return envelope, out, req.id

    def _serve_one(self, frames: list[bytes]) -> None:
        self.requests += 1
        envelope, out, rid = self.handle_message(frames)
        if isinstance(out, Future):
            self._pending.append((envelope, rid, out))
            return
        if out is None:
            out = Reply(ok=False, error="no reply")
        if not out.ok:
            self.errors += 1
        if out.id is None and rid is not None:
            out.id = rid
        self._reply(envelope, out)

    def _flush_pending(self) -> None:
        still = []
        for envelope, rid, fut in self._pending:
            if not fut.done():
                still.append((envelope, rid, fut))
                continue
            try:
                out = fut.result()
                if not isinstance(out, Reply):
                    out = Reply(ok=True, data=out if isinstance(out, dict) else {"result": out})
            except Exception as e:
                out = Reply(ok=False, error=str(e)[:300] or type(e).__name__)
            if not out.ok:
                self.errors += 1
            out.id = rid
            self._reply(envelope, out)
        self._pending = still

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                events = dict(poller.poll(2 if self._pending else 20))
                if self.sock in events:
                    for _ in range(100):  # bounded burst, then look at pending replies
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._serve_one(frames)
                if self._pending:
                    self._flush_pending()
            except Exception:  # nothing a client sends may end this thread
                log.exception("control loop error")
        # answer what is still pending, so no client waits forever on a stopping daemon
        self._flush_pending()
        for envelope, rid, _fut in self._pending:
            self._reply(envelope, Reply(ok=False, id=rid, error="daemon stopping"))
        self._pending = []


def request(
    endpoint: str,
    payload: dict | bytes,
    timeout_s: float = 5.0,
    curve: dict | None = None,
    ctx: zmq.Context | None = None,
    max_reply_bytes: int = 16 << 20,
) -> dict:
    """One request from a short-lived client (health checks, scripts). TimeoutError when nothing answers.

    curve: as publish.apply_curve_client takes it.
    A DEALER sends [b"", request], the envelope a REQ sends, so REP and ROUTER servers both answer.
    """
    own = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        apply_socket_limits(sock, max_reply_bytes)
        if curve:
            apply_curve_client(sock, curve)
        # A DEALER whose only peer dropped it (a CURVE server refusing the handshake) has no pipe, and a send
        # then blocks forever: the timeout bounds the send too, and nothing unsent holds up the close.
        sock.setsockopt(zmq.SNDTIMEO, max(int(timeout_s * 1000), 1))
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            sock.send_multipart([b"", body])
        except zmq.Again:
            raise TimeoutError(f"no reply from {endpoint} within {timeout_s} s (the request could not be sent)") from None
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply from {endpoint} within {timeout_s} s")
        frames = sock.recv_multipart()
        return json.loads(frames[-1])
    finally:
        sock.close()
        if own:
            ctx.term()
