"""Shared by the view's tests and benchmarks/bench_view.py: a real daemon on the lite bundle (synthetic line,
two products), the view served by a real uvicorn on a free loopback port, and headless Debian Chromium."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PREFIX = "view.test"
TOKEN = "s3cret-token"


def chromium_missing() -> str | None:
    for p in (CHROMIUM, CHROMEDRIVER):
        if not Path(p).exists() and not shutil.which(Path(p).name):
            return f"{p} is absent (Debian packages chromium and chromium-driver; .ci/run installs them)"
    return None


def poll(cond, timeout: float = 30.0, every: float = 0.05):
    """cond()'s first truthy value within timeout, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(every)


def lite_products(bundle: Path, inspector, products=(("tiles", 0), ("tiles2", 1))) -> None:
    """Packs of the procedural synthetic line's normal parts (a different seed per product)."""
    from runtime.line.synthetic import SyntheticLine
    from runtime.pipeline.products import build_pack
    from runtime.pipeline.store import ProductStore

    store = ProductStore(bundle / "products", inspector.pack_spec, dict(inspector.manifest_products))
    for name, seed in products:
        if not store.pack_path(name).is_file():
            line = SyntheticLine(None, seed=seed, reserve=4)
            store.save(build_pack(inspector, name, "", line.normal_shots(4)), replace=True)


def daemon_cfg(bundle: Path, shots_root: Path | None = None, cameras: int = 1, **kw):
    from runtime.line.config import parse_config

    cams = [
        {"name": f"cam{i}", "kind": "synthetic", "source": "procedural", "loop": True,
         "options": {"seed": 10 + i, "defect_rate": 0.5, "reserve": 4}}
        for i in range(cameras)
    ]  # fmt: skip
    raw = {
        "bundle": str(bundle),
        "product": "tiles",
        "resume_last_product": False,
        "publish": "tcp://127.0.0.1:*",
        "control": "tcp://127.0.0.1:*",
        "topic_prefix": PREFIX,
        "heartbeat_s": 0.5,
        "log_level": "WARNING",
        "backend": {"intra_op_threads": 1, "llm_threads": 1, "blas_threads": 1},
        **kw,
    }
    if cameras == 1:
        raw["camera"] = cams[0]
    else:
        raw["cameras"] = cams
    if shots_root is not None:
        raw["shots_root"] = str(shots_root)
    return parse_config(raw)


@contextlib.contextmanager
def running_daemon(cfg, inspector=None) -> Iterator:
    from runtime.line.daemon import Daemon

    d = Daemon(cfg, inspector=inspector)
    d.start()
    try:
        yield d
    finally:
        d.request_stop()
        d.wait(30)
        d.shutdown()


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """uvicorn on a socket bound here (no port race); yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    t.start()
    try:
        if not poll(lambda: server.started or not t.is_alive(), 30) or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(15)
        sock.close()


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
        "--disable-dev-shm-usage",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
