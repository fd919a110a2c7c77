"""The sinks a config asks for, built in one place (each sink's extra imported only when configured)."""

from __future__ import annotations

from typing import Any

from runtime.sinks.base import Sink


def build_sinks(cfg: Any, daemon: Any) -> list[Sink]:
    """cfg: the DaemonConfig; daemon: the running Daemon (sinks that take commands call daemon.handle)."""
    sinks: list[Sink] = []
    return sinks
