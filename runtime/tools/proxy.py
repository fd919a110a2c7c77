"""`agpt proxy --frontend tcp://station1:5555 [--frontend ...] --backend tcp://0.0.0.0:5560`: one address for a
plant's collectors to subscribe to every station, on ZeroMQ's own forwarder (zmq.proxy), nothing of ours in
the message path.

    stations (XPUB, bind)  <-connect-  XSUB [proxy] XPUB  <-connect-  collectors (SUB: agpt subscribe, controllers)

Messages pass unchanged: a station's results keep their topics (<prefix>.result ...), so a collector tells
stations apart by topic and subscribes by prefix (`line1.` for one line, `line1.station3.` for one station).

Late joiners: a daemon re-sends its last status to every new status subscription it sees (its XPUB is
verbose). The proxy's backend is XPUB_VERBOSE too, so every collector's subscription travels up to every
station, also one that an earlier collector already made; the stations answer with their status at once
and a collector that connects late knows every station's state without waiting for the next heartbeat.
(Collectors already subscribed see one extra, identical status: harmless, the daemon documents it.) When a
station restarts, the XSUB sends it the subscriptions again, and the station answers with its status.

CURVE, each side on its own: --station-key (the stations' public key; one for all, or one per --frontend in
order) with --client-key (the proxy's own secret key, which the stations authorise) encrypts the proxy's link
to the stations; --server-key (the proxy's secret key) with --authorized-clients (a folder of collector
public keys) makes the backend a CURVE server that only those collectors can reach.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import threading
from pathlib import Path

import zmq

from runtime.errors import AgptError
from runtime.line.config import ENDPOINT_RE, is_local_endpoint
from runtime.line.control import start_authenticator
from runtime.line.publish import apply_curve_client, apply_socket_limits, bound_socket

log = logging.getLogger("agpt.proxy")
_ids = itertools.count()


class Proxy:
    """XSUB (connected to every station) -> XPUB (bound for collectors), run by zmq.proxy_steerable on its own
    thread; stop() terminates it through the control socket (a proxy cannot be interrupted otherwise)."""

    def __init__(
        self,
        frontends: list[str],
        backend: str,
        ctx: zmq.Context | None = None,
        station_keys: list[Path] | None = None,
        client_key: Path | None = None,
        server_key: Path | None = None,
        authorized_clients: Path | None = None,
        hwm: int = 1000,
        max_message_bytes: int = 64 << 20,
    ):
        if not frontends:
            raise AgptError("proxy: give at least one --frontend (a station's publish endpoint)")
        for ep in [*frontends, backend]:
            if not ENDPOINT_RE.match(ep):
                raise AgptError(f"proxy: {ep}: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
        station_keys = list(station_keys or [])
        if station_keys and len(station_keys) not in (1, len(frontends)):
            raise AgptError(f"proxy: {len(station_keys)} --station-key for {len(frontends)} --frontend (give one, or one each)")
        if bool(station_keys) != (client_key is not None):
            raise AgptError("proxy: CURVE to the stations needs both --station-key and --client-key")
        if (server_key is None) != (authorized_clients is None):
            raise AgptError("proxy: CURVE for collectors needs both --server-key and --authorized-clients")
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._auth = None
        self.frontend = self.backend = self._ctrl = self._ctrl_in = None
        self._thread: threading.Thread | None = None
        try:
            if server_key is not None:
                self._auth = start_authenticator(self.ctx, authorized_clients)
            # XPUB_VERBOSE: duplicate subscriptions go upstream too, so every late collector gets the statuses
            try:
                self.backend = bound_socket(
                    self.ctx, zmq.XPUB, backend, max_message_bytes, server_key, {zmq.SNDHWM: hwm, zmq.XPUB_VERBOSE: 1}
                )
            except zmq.ZMQError as e:
                raise AgptError(f"proxy: cannot bind {backend}: {e}") from None
            self.backend_endpoint = self.backend.getsockopt_string(zmq.LAST_ENDPOINT)
            self.frontend = self.ctx.socket(zmq.XSUB)
            apply_socket_limits(self.frontend, max_message_bytes)
            self.frontend.setsockopt(zmq.RCVHWM, hwm)
            for i, ep in enumerate(frontends):
                if station_keys:  # CURVE options are taken per connect: each station may have its own key
                    key = station_keys[i if len(station_keys) > 1 else 0]
                    try:
                        apply_curve_client(self.frontend, {"server_public_key": key, "client_secret_key": client_key})
                    except (OSError, ValueError) as e:
                        raise AgptError(f"proxy: CURVE keys: {e}") from None
                self.frontend.connect(ep)
            ctrl = f"inproc://agpt-proxy-ctrl-{next(_ids)}"
            self._ctrl_in = self.ctx.socket(zmq.PAIR)
            self._ctrl_in.bind(ctrl)
            self._ctrl = self.ctx.socket(zmq.PAIR)
            self._ctrl.connect(ctrl)
        except BaseException:
            self._close()
            raise
        self.frontends = list(frontends)
        if not is_local_endpoint(backend) and server_key is None:
            log.warning("proxy: %s is reachable from other machines without CURVE: anyone there can read the results", backend)

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._thread.start()
        log.info("proxy: %d station(s) -> %s", len(self.frontends), self.backend_endpoint)
        return self

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self._ctrl_in)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:  # pragma: no cover - a proxy that dies must say so
            log.error("proxy stopped: %s", e)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._ctrl.send(b"TERMINATE")
            self._thread.join(timeout)
        self._close()

    def _close(self) -> None:
        for s in (self.frontend, self.backend, self._ctrl, self._ctrl_in):
            if s is not None and not s.closed:
                s.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--frontend", action="append", required=True, metavar="ENDPOINT",
        help="a station's publish endpoint to connect to, e.g. tcp://10.0.3.11:5555 (repeat for every station)",
    )  # fmt: skip
    p.add_argument("--backend", required=True, metavar="ENDPOINT", help="where collectors connect, e.g. tcp://0.0.0.0:5560")
    p.add_argument("--station-key", type=Path, action="append", default=None,
                   help="CURVE: the stations' public key file (one for all, or one per --frontend in order)")  # fmt: skip
    p.add_argument("--client-key", type=Path, default=None, help="CURVE: the proxy's secret key file, as the stations' client")
    p.add_argument("--server-key", type=Path, default=None, help="CURVE: the proxy's secret key file, as the collectors' server")
    p.add_argument("--authorized-clients", type=Path, default=None, help="CURVE: folder of the collectors' public key files")
    p.add_argument("--hwm", type=int, default=1000, help="messages queued per station and per collector before drops")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    proxy = Proxy(args.frontend, args.backend, station_keys=args.station_key, client_key=args.client_key,
                  server_key=args.server_key, authorized_clients=args.authorized_clients, hwm=args.hwm)  # fmt: skip
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    proxy.start()
    print(f"proxy: {', '.join(args.frontend)} -> {proxy.backend_endpoint}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        proxy.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
    return 0
