"""The sinks a config asks for, built in one place (each sink's extra imported only when configured)."""

from __future__ import annotations

import importlib
from typing import Any

from runtime.errors import AgptError
from runtime.sinks.base import Sink

# config key -> (the module the sink needs, the extra that installs it)
EXTRAS = {
    "mqtt": ("paho.mqtt.client", "mqtt"),
    "metrics": ("prometheus_client", "metrics"),
    "archive": ("sqlalchemy", "archive"),
    "opcua": ("asyncua", "opcua"),
}


def require_extra(key: str) -> None:
    """A config that enables a sink whose extra is missing gets one clear line, before anything starts."""
    module, extra = EXTRAS[key]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        raise AgptError(f"{key}: is configured but {module} is not installed (pip install 'anomalygpt-edge[{extra}]')") from None


def require_extras(cfg: Any) -> None:
    """Every configured sink's extra, checked before the daemon opens its models (a 7B bundle takes tens of
    seconds to load: a missing extra must not wait for that to be reported)."""
    for key in EXTRAS:
        if getattr(cfg, key, None) is not None:
            require_extra(key)


def build_sinks(cfg: Any, daemon: Any) -> list[Sink]:
    """cfg: the DaemonConfig; daemon: the running Daemon (sinks that take commands call daemon.handle; sinks that
    report the status call daemon.status). daemon may be None (a sink built alone): no status then."""
    sinks: list[Sink] = []
    status_fn = getattr(daemon, "status", None)
    if getattr(cfg, "mqtt", None) is not None:
        require_extra("mqtt")
        from runtime.sinks.mqtt import MqttSink

        sinks.append(MqttSink(cfg.mqtt, cfg.line, cfg.station, status_fn, status_interval_s=cfg.heartbeat_s))
    if getattr(cfg, "metrics", None) is not None:
        require_extra("metrics")
        from runtime.sinks.metrics import MetricsSink

        sinks.append(MetricsSink(cfg.metrics, status_fn))
    if getattr(cfg, "archive", None) is not None:
        require_extra("archive")
        from runtime.sinks.archive.writer import ArchiveSink

        sinks.append(ArchiveSink(cfg.archive, on_event=_daemon_events(daemon)))
    if getattr(cfg, "opcua", None) is not None:
        require_extra("opcua")
        from runtime.sinks.opcua.sink import OpcuaSink

        sinks.append(OpcuaSink(cfg.opcua, daemon))
    return sinks


def _daemon_events(daemon: Any):
    """A sink's own events (archive_drop) raised through the daemon: its publisher and every sink. Events before
    the publisher exists (a sink's start) only reach the log."""

    def emit(kind: str, detail: dict) -> None:
        if getattr(daemon, "publisher", None) is not None:
            daemon.event(kind, detail)

    return emit if daemon is not None else None
