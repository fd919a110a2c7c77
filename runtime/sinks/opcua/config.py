"""`opcua:` in the daemon config: where the OPC UA server listens and who may do what.

Read-only for anonymous clients on loopback by default; the methods (SwapProduct, Pause, Resume, SetPart,
Trigger) need a user from `users_file` or a client certificate from `trusted_clients`. An endpoint other
machines can reach is refused unless the channel is encrypted and every client authenticates (the rule the
control channel follows with CURVE). Imports no asyncua: the config validates without the extra.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from runtime.errors import AgptError
from runtime.strict import StrictModel

OPC_ENDPOINT_RE = re.compile(r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+):(\d{1,5})(/.*)?$")
SecurityPolicy = Literal[
    "None",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
]


class OpcuaConfig(StrictModel):
    endpoint: str = Field(
        "opc.tcp://127.0.0.1:4840",
        description="opc.tcp://HOST:PORT[/path] the server binds (port 0: a free port, for tests); a non-loopback host "
        "needs an encrypting security policy and authenticated clients (else the daemon refuses to start)",
    )
    namespace: str = Field(
        "urn:anomalygpt-edge:station", min_length=1, description="namespace URI of the station's nodes (its index is in the NamespaceArray)"
    )  # fmt: skip
    server_name: str = Field("anomalygpt-edge", min_length=1, description="ApplicationName the server announces")
    users_file: Path | None = Field(
        None,
        description="users allowed to call the methods: one `name:pbkdf2_sha256$ITER$SALT$HASH` per line "
        "(`python -m runtime.sinks.opcua.users FILE NAME` adds one); plain passwords are never stored",
    )
    security_policies: list[SecurityPolicy] = Field(
        default_factory=lambda: ["None"],
        min_length=1,
        description="channel security the endpoints offer; anything but None needs certificate and private_key",
    )
    certificate: Path | None = Field(None, description="the server's certificate (DER or PEM), for the secure policies")
    private_key: Path | None = Field(None, description="its private key (PEM)")
    trusted_clients: Path | None = Field(
        None, description="folder of client certificates (.der/.pem): a client whose channel certificate is one of them may call the methods"
    )  # fmt: skip
    allow_anonymous_read: bool = Field(
        True, description="anonymous sessions may browse, read and subscribe (never call); only on a loopback endpoint"
    )
    method_timeout_s: float = Field(
        30.0, gt=0, description="how long a method call waits for the daemon's reply (a changeover loads a pack)"
    )
    state_interval_s: float = Field(0.5, gt=0, description="how often the station state variables (fps, drops) are refreshed")
    max_queue: int = Field(1000, ge=1, description="results waiting to be written to the variables before drops are counted")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        m = OPC_ENDPOINT_RE.match(v)
        if not m or int(m.group(2)) > 65535:
            raise ValueError("expected opc.tcp://HOST:PORT[/path]")
        return v

    @model_validator(mode="after")
    def _check(self):
        if any(p != "None" for p in self.security_policies) and (self.certificate is None or self.private_key is None):
            raise ValueError("a security policy other than None needs `certificate` and `private_key`")
        return self

    @property
    def host(self) -> str:
        return OPC_ENDPOINT_RE.match(self.endpoint).group(1).strip("[]")

    @property
    def port(self) -> int:
        return int(OPC_ENDPOINT_RE.match(self.endpoint).group(2))

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # 0.0.0.0 parses; a hostname or interface name may be reachable from outside

    def check_security(self, where: str = "config") -> None:
        """Refuse an endpoint other machines can reach unless its channel is encrypted and every client authenticates."""
        if self.is_loopback():
            return
        missing = []
        if "None" in self.security_policies or not any(p.endswith("SignAndEncrypt") for p in self.security_policies):
            missing.append("security_policies with only encrypting policies (e.g. [Basic256Sha256_SignAndEncrypt])")
        if self.allow_anonymous_read:
            missing.append("allow_anonymous_read: false")
        if self.users_file is None and self.trusted_clients is None:
            missing.append("users_file or trusted_clients")
        if missing:
            raise AgptError(
                f"{where}: opcua.endpoint: {self.endpoint} is reachable from other machines: set {'; '.join(missing)}, "
                "or bind it to 127.0.0.1"
            )

    def resolve(self, base: Path) -> None:
        """Relative paths in a YAML file are relative to its folder."""
        for name in ("users_file", "certificate", "private_key", "trusted_clients"):
            p = getattr(self, name)
            if p is not None and not p.is_absolute():
                setattr(self, name, (base / p).resolve())
