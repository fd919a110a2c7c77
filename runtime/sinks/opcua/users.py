"""The OPC UA users file: `name:pbkdf2_sha256$ITERATIONS$SALT$HASH` per line (salt and hash base64), '#' comments.

Passwords are never stored, only PBKDF2-HMAC-SHA256 hashes (stdlib hashlib), compared in constant time.
Add or replace a user (asks for the password, or reads one line from stdin with --stdin):

    python -m runtime.sinks.opcua.users opcua-users.txt plc1
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
from pathlib import Path

from runtime.errors import AgptError

SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256; a login costs ~0.3 s on a small ARM core
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode()
    return f"{SCHEME}${iterations}${b64(salt)}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def load_users(path: Path) -> dict[str, str]:
    """name -> encoded hash; a malformed line is an error naming it (a typo must not lock the PLC out silently)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AgptError(f"{path}: cannot read the OPC UA users file: {e.strerror or e}") from None
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        parts = encoded.split("$")
        if not sep or not name or set(name) - NAME_CHARS or len(parts) != 4 or parts[0] != SCHEME or not parts[1].isdigit():
            raise AgptError(f"{path}:{n}: expected name:{SCHEME}$ITERATIONS$SALT$HASH")
        users[name] = encoded
    return users


def set_user(path: Path, name: str, password: str, iterations: int = ITERATIONS) -> None:
    """Add or replace one user; the file is rewritten atomically, readable by its owner only."""
    if not name or set(name) - NAME_CHARS:
        raise AgptError(f"user name {name!r}: letters, digits and _ . - @ only")
    if not password:
        raise AgptError("empty password")
    path = Path(path)
    users = load_users(path) if path.exists() else {}
    users[name] = hash_password(password, iterations)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{n}:{h}\n" for n, h in users.items()))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.sinks.opcua.users", description="add or replace an OPC UA user")
    p.add_argument("file", type=Path)
    p.add_argument("name")
    p.add_argument("--stdin", action="store_true", help="read the password from one line of stdin")
    p.add_argument("--iterations", type=int, default=ITERATIONS)
    a = p.parse_args(argv)
    pw = sys.stdin.readline().rstrip("\n") if a.stdin else getpass.getpass(f"password for {a.name}: ")
    try:
        set_user(a.file, a.name, pw, a.iterations)
    except AgptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.file}: {a.name} set")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
