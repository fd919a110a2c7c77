"""`agpt proxy`: three daemons through one XSUB/XPUB forwarder to one subscriber, every station's results
tagged by topic; late collectors still get every station's status at once; CURVE on both sides."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq
from _daemon_fakes import CountingSource, FakeInspector, collect, daemon_config, make_bundle

from runtime.errors import AgptError
from runtime.line.config import CurveConfig
from runtime.line.daemon import Daemon
from runtime.tools.proxy import Proxy
from runtime.tools.subscribe import ResultSubscriber

STATIONS = ("stationA", "stationB", "stationC")


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


@contextlib.contextmanager
def stations(bundle: Path, n_frames: int, gate: threading.Event, **kw):
    """Three daemons, line1.stationA/B/C, each a finite gated source; heartbeat 60 s, so a status that
    arrives within the test came from the late-joiner welcome, not a heartbeat."""
    ds = []
    try:
        for name in STATIONS:
            cfg = daemon_config(bundle, topic_prefix=f"line1.{name}", heartbeat_s=60.0, **kw)
            d = Daemon(cfg, inspector=FakeInspector(), source=CountingSource(n=n_frames, gate=gate))
            d.start()
            ds.append(d)
        yield ds
    finally:
        for d in ds:
            d.shutdown()


def statuses_of_every_station(bag) -> bool:
    return {s.topic.split(".")[1] for s in bag.get("status_msgs", [])} == set(STATIONS)


def collect_tagged(sub, until, timeout: float = 15.0) -> dict:
    """collect(), with the longer wait several stations need."""
    return collect(sub, until, timeout)


def test_three_stations_through_one_proxy_to_one_subscriber(bundle):
    gate = threading.Event()
    with stations(bundle, 25, gate) as ds:
        with Proxy([d.publish_endpoint for d in ds], "tcp://127.0.0.1:*") as proxy:
            with ResultSubscriber(proxy.backend_endpoint, [""]) as sub:
                # joined after every station's first (and, for 60 s, only) heartbeat: the welcome went through
                collect_tagged(sub, statuses_of_every_station)
                gate.set()
                for d in ds:
                    assert d.wait(30)
                    d.shutdown()
                finals = lambda b: (
                    {s.topic for s in b["status_msgs"] if s.status.final} == {f"line1.{n}.status" for n in STATIONS}
                )
                bag = collect_tagged(sub, finals)
                assert sub.malformed == 0 and sum(sub.lost.values()) == 0
    for name in STATIONS:
        mine = [m for m in bag["results"] if m.topic == f"line1.{name}.result"]
        assert [m.header.frame_id for m in mine] == list(range(1, 26)), name
        assert all(m.header.prefix == f"line1.{name}" and m.header.station == name for m in mine)
        assert any(e.topic == f"line1.{name}.event" and e.event.kind == "stopping" for e in bag["event_msgs"])
    assert len(bag["results"]) == 75


def test_a_late_collector_gets_every_station_status_at_once(bundle):
    """The second collector subscribes to what the first already did (""): only a verbose XPUB in the
    proxy passes that duplicate subscription up, and only then do the stations answer with their status."""
    gate = threading.Event()
    with stations(bundle, 5, gate) as ds:
        with Proxy([d.publish_endpoint for d in ds], "tcp://127.0.0.1:*") as proxy:
            with ResultSubscriber(proxy.backend_endpoint, [""]) as first:
                collect_tagged(first, statuses_of_every_station)
                gate.set()
                for d in ds:
                    assert d.wait(30)
                with ResultSubscriber(proxy.backend_endpoint, [""]) as late:
                    bag = collect_tagged(late, statuses_of_every_station)
                    assert not any(s.status.final for s in bag["status_msgs"])  # the stations' last heartbeats
                # one station only, by its prefix: that station's status, at once
                with ResultSubscriber(proxy.backend_endpoint, ["line1.stationB."]) as one:
                    bag = collect_tagged(one, lambda b: b["status_msgs"])
                    assert {m.topic for m in bag["status_msgs"]} == {"line1.stationB.status"}


def _certs(tmp_path: Path, *names: str) -> dict[str, tuple[Path, Path]]:
    from zmq import auth

    out = {}
    for n in names:
        d = tmp_path / f"keys-{n}"
        d.mkdir()
        pub, sec = auth.create_certificates(str(d), n)
        out[n] = (Path(pub), Path(sec))
    return out


def test_curve_on_both_sides(bundle, tmp_path):
    keys = _certs(tmp_path, "station", "proxy_client", "proxy_server", "collector")
    station_clients = tmp_path / "station_clients"  # the stations accept the proxy
    station_clients.mkdir()
    (station_clients / "proxy_client.key").write_bytes(keys["proxy_client"][0].read_bytes())
    collectors = tmp_path / "collectors"  # the proxy accepts the collector
    collectors.mkdir()
    (collectors / "collector.key").write_bytes(keys["collector"][0].read_bytes())
    curve = CurveConfig(server_secret_key=keys["station"][1], authorized_clients=station_clients)
    gate = threading.Event()
    with stations(bundle, 10, gate, curve=curve) as ds:
        proxy = Proxy(
            [d.publish_endpoint for d in ds], "tcp://127.0.0.1:*", station_keys=[keys["station"][0]],
            client_key=keys["proxy_client"][1], server_key=keys["proxy_server"][1], authorized_clients=collectors,
        )  # fmt: skip
        with proxy:
            client = {"server_public_key": keys["proxy_server"][0], "client_secret_key": keys["collector"][1]}
            with ResultSubscriber(proxy.backend_endpoint, [""], curve=client) as sub:
                collect_tagged(sub, statuses_of_every_station)
                gate.set()
                bag = collect_tagged(sub, lambda b: len(b["results"]) == 30)
    assert {m.topic for m in bag["results"]} == {f"line1.{n}.result" for n in STATIONS}


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(AgptError, match="at least one --frontend"):
        Proxy([], "tcp://127.0.0.1:*")
    with pytest.raises(AgptError, match="expected tcp://"):
        Proxy(["localhost:5555"], "tcp://127.0.0.1:*")
    with pytest.raises(AgptError, match="needs both --station-key and --client-key"):
        Proxy(["tcp://127.0.0.1:5555"], "tcp://127.0.0.1:*", station_keys=[Path("s.key")])
    ctx = zmq.Context()
    try:
        taken = ctx.socket(zmq.PUB)
        taken.bind("tcp://127.0.0.1:*")
        with pytest.raises(AgptError, match="cannot bind"):
            Proxy(["tcp://127.0.0.1:5555"], taken.getsockopt_string(zmq.LAST_ENDPOINT), ctx=ctx)
        taken.close(0)
    finally:
        ctx.term()


def test_agpt_proxy_command_runs_and_stops_on_sigterm(bundle, tmp_path):
    gate = threading.Event()
    backend = f"ipc://{tmp_path}/plant"
    with stations(bundle, 3, gate) as ds:
        cmd = [sys.executable, "-m", "runtime.cli", "proxy", "--backend", backend, "--log-level", "WARNING"]
        for d in ds:
            cmd += ["--frontend", d.publish_endpoint]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with ResultSubscriber(backend, ["line1."]) as sub:
                collect_tagged(sub, statuses_of_every_station, timeout=30)  # includes the interpreter's start
                gate.set()
                collect(sub, lambda b: len(b["results"]) == 9)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, proc.stderr.read().decode()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert b"-> " + backend.encode() in proc.stdout.read()


def test_proxy_unit_is_clean_for_systemd(tmp_path):
    """deploy/agpt-proxy.service: systemd-analyze verify has nothing to say (ExecStart's binary swapped for one
    that exists here, as tests/deploy does for agpt.service), and its ExecStart parses as `agpt proxy` arguments."""
    import argparse
    import shlex
    import shutil

    from runtime.tools import proxy as proxy_mod

    unit = (Path(__file__).resolve().parents[2] / "deploy" / "agpt-proxy.service").read_text()
    exec_line = next(l for l in unit.splitlines() if l.startswith("ExecStart="))
    argv = shlex.split(exec_line.split("=", 1)[1])
    assert argv[0].endswith("/agpt") and argv[1] == "proxy"
    p = argparse.ArgumentParser()
    proxy_mod.add_arguments(p)
    args = p.parse_args(argv[2:])
    assert len(args.frontend) == 2 and args.backend == "tcp://0.0.0.0:5560"
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed")
    f = tmp_path / "agpt-proxy.service"
    f.write_text(unit.replace("ExecStart=/opt/agpt/venv/bin/agpt", f"ExecStart={shutil.which('true')}"))
    r = subprocess.run([tool, "verify", "--man=no", str(f)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "System has not been booted with systemd" in r.stderr:
        pytest.skip("systemd-analyze verify needs systemd here")
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr + r.stdout
