"""`agpt view --daemon CONFIG_OR_ENDPOINTS [--listen 127.0.0.1:8080] [--token ...]`: the operator's web page.

A separate process (the daemon stays lean; the view may run on another machine): it subscribes to the
daemon's results, status, events and previews, talks to its control channel, and serves one page that
shows each camera's live frame with the anomaly map, the verdicts, the last rejects and the changeover
buttons. Needs the `view` extra (starlette, uvicorn, python-multipart, websockets). docs/view.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from runtime.errors import AgptError

log = logging.getLogger("agpt.view")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--daemon",
        required=True,
        help="the daemon's config YAML (endpoints, topic prefix, shots_root and its `view:` section), "
        "or PUBLISH[,CONTROL] endpoints: tcp://127.0.0.1:5555,tcp://127.0.0.1:5556",
    )
    p.add_argument("--listen", default=None, help="HOST:PORT to serve the page on (default: view.listen or 127.0.0.1:8080)")
    p.add_argument("--token", default=None, help="the password for control actions (default: view.token / view.token_file)")
    p.add_argument("--prefix", default=None, help="the daemon's topic_prefix (with endpoints; default line1.station1)")
    p.add_argument("--uploads", type=Path, default=None, help="folder for uploaded shots (the daemon must read it)")
    p.add_argument("--server-key", type=Path, default=None, help="CURVE: the daemon's public key file (server.key)")
    p.add_argument("--client-key", type=Path, default=None, help="CURVE: this view's secret key file (authorised on the daemon)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from runtime.tools.view.app import create_app
    except ModuleNotFoundError as e:
        raise AgptError(f"agpt view needs the module {e.name}: pip install 'anomalygpt-edge[view]'") from None
    from runtime.tools.view.settings import settings_from

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings_from(args.daemon, args.listen, args.token, args.prefix, args.uploads, args.server_key, args.client_key)
    host, port = s.host_port
    if not s.loopback:
        log.warning("the view listens on %s: anyone who reaches it sees the line%s", s.listen,
                    " and, with the token, changes products" if s.token else "")  # fmt: skip
    print(f"agpt view: http://{host}:{port}/ (daemon {s.publish}, control {s.control or 'none'}, "
          f"{'read-only' if not s.token else 'control with the token'})", flush=True)  # fmt: skip
    uvicorn.run(create_app(s), host=host, port=port, log_level=args.log_level.lower())
    return 0
