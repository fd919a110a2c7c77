"""`mqtt:` in the daemon's config: the plant broker, topics, QoS, TLS and credentials (no paho import here,
so a config validates on a host without the `mqtt` extra and the error is the sink's one clear line)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from runtime.strict import StrictModel

# MQTT topic levels: no wildcards, no empty level, no leading slash (a leading '/' makes an empty first level)
TOPIC_ROOT_RE = r"^[^#+/\s]+(/[^#+/\s]+)*$"


class MqttTls(StrictModel):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate (None: the system's)")
    cert_file: Path | None = Field(None, description="client certificate, for brokers that authenticate clients by certificate")
    key_file: Path | None = Field(None, description="the client certificate's private key")
    insecure: bool = Field(False, description="skip the broker host name check (test brokers only)")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self


class MqttConfig(StrictModel):
    """The MQTT bridge: results, status and events to <topic_root>/<line>/<station>/result|mask|status|event|state."""

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is the usual TLS port)")
    protocol: Literal["3.1.1", "5"] = Field(
        "3.1.1", description="MQTT version; 5 adds frame_id / camera user properties to the mask messages"
    )
    topic_root: str = Field("agpt", pattern=TOPIC_ROOT_RE, description="first topic level(s), e.g. plant1/inspection")
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id; None: agpt-<line>-<station>-<host name>, unique per station. Two clients with one "
        "id kick each other off the broker, so set it only when the plant assigns ids",
    )
    username: str | None = Field(None, description="broker user name")
    password: str | None = Field(None, description="broker password (prefer password_file: configs get copied around)")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    tls: MqttTls | None = Field(None, description="TLS to the broker (None: plain TCP)")
    qos: Literal[0, 1, 2] = Field(
        1, description="QoS of results, masks and events: 0 drops (counted) while the broker is away; 1 and 2 hold up to "
        "max_queued messages in the client and send them after the reconnect",
    )  # fmt: skip
    status_qos: Literal[0, 1, 2] = Field(1, description="QoS of the retained status and state messages")
    mask: bool = Field(False, description="also publish each result's mask PNG on .../mask, right after its header")
    status_interval_s: float | None = Field(
        None, gt=0, description="seconds between retained status messages (None: the daemon's heartbeat_s)"
    )
    keepalive_s: int = Field(
        30, ge=5, le=3600, description="MQTT keepalive; the broker publishes the last will this long x1.5 after the link dies"
    )
    reconnect_min_s: float = Field(1.0, gt=0, description="first wait before reconnecting; doubles after each failure")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest wait between reconnect attempts")
    max_queue: int = Field(1000, ge=1, description="results and events waiting for the sink's thread; beyond: dropped, counted")
    max_inflight: int = Field(20, ge=1, le=65535, description="QoS 1/2 messages sent but not yet acknowledged")
    max_queued: int = Field(
        1000, ge=1, description="QoS 1/2 messages the client holds (in flight + waiting for the broker); beyond: dropped, counted"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is smaller than reconnect_min_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def resolve_paths(self, base: Path) -> None:
        """Relative key and password files are relative to the config file's folder (as the other paths are)."""
        if self.password_file is not None and not self.password_file.is_absolute():
            self.password_file = (base / self.password_file).resolve()
        if self.tls is not None:
            for name in ("ca_file", "cert_file", "key_file"):
                p = getattr(self.tls, name)
                if p is not None and not p.is_absolute():
                    setattr(self.tls, name, (base / p).resolve())

    def topic_base(self, line: str, station: str | None) -> str:
        """<topic_root>/<line>/<station> (no station level when the prefix has none)."""
        return "/".join([self.topic_root, line] + ([station] if station else []))

    def derived_client_id(self, line: str, station: str | None) -> str:
        if self.client_id:
            return self.client_id
        raw = "-".join(["agpt", line] + ([station] if station else []) + [socket.gethostname() or "host"])
        return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:128]
