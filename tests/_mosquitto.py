"""A real Mosquitto broker for the MQTT tests: `mosquitto -c <conf>` on a free loopback port, stoppable and
restartable on the same port (the broker outage test); skipped with a reason where the binary is absent."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def make_tls(workdir: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); skipped where openssl is absent."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = Path(workdir)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=agpt-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
        "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


class Mosquitto:
    """tls: make_tls()'s files (the listener speaks TLS only); users: name -> password (no anonymous clients)."""

    def __init__(self, workdir: Path, port: int | None = None, tls: dict[str, Path] | None = None, users: dict | None = None):
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (Debian package `mosquitto`; .ci/run installs it)")
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        # run as we are: as root, mosquitto drops to user `mosquitto`, which cannot read our private tmp folder
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "persistence false", f"log_dest file {self.log}"]
        lines += ["log_type error", "log_type warning", "log_type notice"]
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        if users:
            if shutil.which("mosquitto_passwd") is None:
                pytest.skip("mosquitto_passwd is not installed (it comes with the Debian package `mosquitto`)")
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for name, pw in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), name, pw], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines += ["allow_anonymous true"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto not listening on {self.port} after {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Collector:
    """A paho subscriber on the broker: every message kept as (topic, payload, retain, receive time)."""

    def __init__(self, port: int, topic: str = "#", ca: Path | None = None, auth: tuple[str, str] | None = None):
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-collector-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    def on(self, suffix: str) -> list[tuple[str, bytes, bool, float]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith("/" + suffix)]

    def wait(self, pred, timeout: float = 15.0, what: str = "messages") -> None:
        deadline = time.monotonic() + timeout
        while not pred(self):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {len(self.messages)} messages"
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
