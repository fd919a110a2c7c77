"""systemd readiness and watchdog notifications (sd_notify) without libsystemd.

systemd hands a Type=notify service the address of a unix datagram socket in $NOTIFY_SOCKET; each
notification is one datagram of newline-separated KEY=VALUE lines ("READY=1", "WATCHDOG=1",
"STOPPING=1", "STATUS=..."). That is the whole protocol, so a few lines of socket code replace the
C library and keep the runtime free of extra dependencies.

Outside systemd (Docker, a shell, the tests without the variable) every call is a silent no-op, and a
failed send never raises: a heartbeat must not take the daemon down because systemd went away.

Use from the daemon:
    notify(READY)        once the bundle, pack and camera are up (systemd then considers the unit started)
    notify(WATCHDOG)     from the status heartbeat (each second), only when the frame loop has made
                         progress since the last beat, so a hung pipeline with a live heartbeat thread
                         still trips WatchdogSec
    notify(STOPPING)     at the start of a SIGTERM/SIGINT shutdown
    notify(status_line("fps 9.8, product cookie"))   optional, shown by `systemctl status`
"""

from __future__ import annotations

import os
import socket

READY = "READY=1"
WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"


def status_line(text: str) -> str:
    """A STATUS= notification; newlines would start a new KEY=VALUE line, so they are flattened."""
    return "STATUS=" + " ".join(text.splitlines())


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):  # Linux abstract namespace: leading NUL instead of '@'
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock ("vsock:...") and relative paths are not used by systemd for local services


def notify(state: str) -> bool:
    """Send one notification to systemd; True when it was sent, False when not under systemd or on error."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    address = _address(raw) if raw else None
    if address is None:
        return False
    try:
        # non-blocking: a notify socket nobody reads (a full receive queue) must drop a ping, never stall the
        # heartbeat or the loop that calls this (BlockingIOError is an OSError)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(state.encode("utf-8"), address)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """The WatchdogSec systemd set for this process, in seconds, or None when no watchdog applies.

    Ping at least twice per interval (systemd's own advice); the daemon's 1 s heartbeat does that for
    any WatchdogSec of 2 s or more.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for another process (e.g. inherited by a child)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
