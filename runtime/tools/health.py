"""`agpt health`: ask a running daemon's control channel for its status; exit 0 when it answers ok.

Made for container HEALTHCHECKs and monitoring scripts, so the exit codes follow Docker's meaning:
0 healthy, 1 unhealthy (never 2, which Docker reserves). Every failure (no daemon, no answer within the
timeout, a malformed answer, ok:false, a bad endpoint) is one line on stdout and exit 1, never a trace.

Wire format: a DEALER socket sends [b"", b'{"cmd":"status"}'], the same envelope a REQ socket sends,
so the daemon may serve control with REP or with ROUTER (ROUTER sees [identity, b"", request] and
replies [identity, b"", reply]). The answer is the last frame, a JSON object with "ok": true.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import zmq

from runtime.line.control import request

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# Environment defaults: a container changes the probe with `docker run -e ...`, not a new HEALTHCHECK.
ENDPOINT_ENV = "AGPT_CONTROL_ENDPOINT"
SERVER_KEY_ENV = "AGPT_CONTROL_SERVER_KEY"  # CURVE: the daemon's public certificate (NAME.key)
CLIENT_KEY_ENV = "AGPT_CONTROL_CLIENT_KEY"  # CURVE: an authorised client's secret certificate (NAME.key_secret)
MAX_REPLY_BYTES = 1 << 20  # a status answer is a few hundred bytes; anything huge is refused by ZMQ itself


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT),
        help=f"the daemon's control endpoint (default: ${ENDPOINT_ENV} or {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default: 2)")
    p.add_argument(
        "--server-key",
        type=Path,
        default=os.environ.get(SERVER_KEY_ENV) or None,
        help=f"CURVE: the daemon's public key file (zmq.auth certificate); needed when control uses CURVE "
        f"(default: ${SERVER_KEY_ENV})",
    )
    p.add_argument(
        "--client-key",
        type=Path,
        default=os.environ.get(CLIENT_KEY_ENV) or None,
        help=f"CURVE: this client's secret key file (zmq.auth certificate), one the daemon authorises "
        f"(default: ${CLIENT_KEY_ENV})",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing when healthy")


def check(
    endpoint: str,
    timeout: float = 2.0,
    server_key: Path | None = None,
    client_key: Path | None = None,
) -> tuple[bool, str]:
    """One status round trip. Returns (healthy, one-line reason or summary)."""
    curve = {"server_public_key": server_key, "client_secret_key": client_key} if server_key is not None else None
    try:
        reply = request(endpoint, {"cmd": "status"}, timeout, curve, max_reply_bytes=MAX_REPLY_BYTES)
    except TimeoutError:
        return False, f"no answer from {endpoint} within {timeout:g} s"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return False, f"malformed answer from {endpoint}: {str(e)[:120]}"
    except (zmq.ZMQError, OSError, ValueError) as e:
        return False, f"cannot query {endpoint}: {e}"
    if not isinstance(reply, dict):
        return False, f"malformed answer from {endpoint}: not a JSON object"
    if reply.get("ok") is not True:
        return False, f"daemon at {endpoint} reports not ok: {str(reply.get('error', reply))[:200]}"
    return True, "healthy: " + json.dumps(reply, separators=(",", ":"), default=str)[:300]


def run(args: argparse.Namespace) -> int:
    healthy, message = check(args.endpoint, args.timeout, args.server_key, args.client_key)
    if not (healthy and args.quiet):
        print(message, flush=True)
    return 0 if healthy else 1


if __name__ == "__main__":  # `python -m runtime.tools.health`, usable without the console script
    import sys

    parser = argparse.ArgumentParser(prog="python -m runtime.tools.health", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
