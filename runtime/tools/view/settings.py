"""What `agpt view` needs to know: where the daemon publishes and listens, and the view's own settings.

From a daemon config (publish, control, topic_prefix, shots_root and its `view:` section) or from
endpoints given on the command line (`tcp://HOST:5555,tcp://HOST:5556`, the prefix with --prefix).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from runtime.errors import AgptError
from runtime.line.config import ENDPOINT_RE, ViewSetup, is_local_endpoint, load_config
from runtime.names import TOPIC_RE
from runtime.sinks.archive.config import ArchiveConfig
from runtime.strict import StrictModel


class ViewSettings(StrictModel):
    publish: str = Field(description="the daemon's results endpoint (SUB connects here)")
    control: str | None = Field(description="the daemon's control endpoint (None: the page is read-only)")
    prefix: str = Field(pattern=TOPIC_RE, description="the daemon's topic_prefix")
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT of the page")
    token: str | None = Field(None, description="control actions need it; None: read-only")
    uploads: Path | None = Field(None, description="where uploaded shots are saved for add_product (None: uploads refused)")
    rejects: int = Field(12, ge=1, le=200)
    archive: ArchiveConfig | None = Field(None, description="the daemon's archive: the last rejects from before the view started")
    bundle: Path | None = Field(None, description="the daemon's bundle (its preprocessing places the archived masks)")
    preview_max_side: int = Field(640, description="archived rejects are scaled like previews")
    server_key: Path | None = Field(None, description="CURVE: the daemon's public key file (server.key)")
    client_key: Path | None = Field(None, description="CURVE: this view's secret key file (its public key authorised)")
    curve_results: bool = Field(True, description="with CURVE: the results socket is encrypted too (the daemon's curve.results)")
    control_timeout_s: float = Field(10.0, gt=0, description="fast requests (status, pause, swap)")
    slow_timeout_s: float = Field(180.0, gt=0, description="add_product and ask")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise AgptError(f"--listen {self.listen!r}: expected HOST:PORT (127.0.0.1:8080)")
        return host.strip("[]"), int(port)

    @property
    def curve(self) -> dict | None:
        """For publish.apply_curve_client (the control requests and, with curve_results, the SUB)."""
        if self.server_key is None:
            return None
        return {"server_public_key": self.server_key, "client_secret_key": self.client_key}

    @property
    def loopback(self) -> bool:
        return is_local_endpoint(f"tcp://{self.host_port[0]}:0")


def _token_from(setup: ViewSetup | None, cli_token: str | None) -> str | None:
    if cli_token:
        return cli_token
    if setup is None:
        return None
    if setup.token_file is not None:
        try:
            line = setup.token_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise AgptError(f"view.token_file {setup.token_file}: cannot read a token ({e})") from None
        if len(line) < 8:
            raise AgptError(f"view.token_file {setup.token_file}: the token is shorter than 8 characters")
        return line
    return setup.token


def settings_from(
    daemon: str,
    listen: str | None = None,
    token: str | None = None,
    prefix: str | None = None,
    uploads: Path | None = None,
    server_key: Path | None = None,
    client_key: Path | None = None,
) -> ViewSettings:
    """daemon: a config YAML path, or 'PUBLISH[,CONTROL]' endpoints. server_key/client_key: CURVE, both or neither."""
    if (server_key is None) != (client_key is None):
        raise AgptError("CURVE needs both --server-key and --client-key")
    keys = {"server_key": server_key, "client_key": client_key}
    first = daemon.split(",")[0]
    if ENDPOINT_RE.match(first):
        parts = [p.strip() for p in daemon.split(",")]
        if len(parts) > 2 or not all(ENDPOINT_RE.match(p) for p in parts):
            raise AgptError(f"--daemon {daemon!r}: expected a config file or PUBLISH[,CONTROL] endpoints")
        return ViewSettings(
            publish=parts[0],
            control=parts[1] if len(parts) > 1 else None,
            prefix=prefix or "line1.station1",
            listen=listen or "127.0.0.1:8080",
            token=token,
            uploads=uploads,
            **keys,
        )
    cfg = load_config(Path(daemon))
    if cfg.curve is not None and server_key is None:
        raise AgptError(f"{daemon}: the daemon uses CURVE: give the view --server-key and --client-key")
    setup = cfg.view
    up = uploads or (setup.uploads if setup else None)
    if up is None and cfg.shots_root is not None:
        up = cfg.shots_root / "view-uploads"
    if up is not None and cfg.shots_root is not None:
        root, target = cfg.shots_root.resolve(), Path(up).resolve()
        if target != root and root not in target.parents:
            raise AgptError(f"view.uploads {up} lies outside shots_root {cfg.shots_root}: the daemon would refuse those shots")

    def connectable(ep: str) -> str:  # a daemon bound to every interface is reached on loopback from its own host
        return ep.replace("tcp://*:", "tcp://127.0.0.1:").replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")

    return ViewSettings(
        publish=connectable(cfg.publish),
        control=connectable(cfg.control),
        prefix=prefix or cfg.topic_prefix,
        listen=listen or (setup.listen if setup else "127.0.0.1:8080"),
        token=_token_from(setup, token),
        uploads=up,
        rejects=setup.rejects if setup else 12,
        curve_results=cfg.curve.results if cfg.curve is not None else True,
        archive=cfg.archive if cfg.archive is not None and cfg.archive.images != "none" else None,
        bundle=cfg.bundle,
        preview_max_side=cfg.preview_max_side,
        **keys,
    )
