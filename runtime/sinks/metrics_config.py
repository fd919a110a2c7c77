"""`metrics:` in the daemon's config: where the Prometheus endpoint listens (no prometheus_client import here)."""

from __future__ import annotations

from pydantic import Field

from runtime.strict import StrictModel


class MetricsConfig(StrictModel):
    port: int = Field(9464, ge=0, le=65535, description="HTTP port of /metrics (0: any free port, for tests)")
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on; loopback by default: the endpoint has no authentication, so expose it to "
        "the plant network (0.0.0.0) only where that network may read it, or put a reverse proxy in front",
    )
