"""The MQTT bridge against a real Mosquitto broker on loopback: every result arrives, a broker outage never
stalls the line (drops counted, reconnect), the last will appears when the daemon process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _daemon_fakes import CountingSource, daemon_config, make_bundle, running
from _mosquitto import Collector, Mosquitto

from runtime.errors import AgptError
from runtime.line.messages import Event, ResultHeader, Status
from runtime.sinks.mqtt_config import MqttConfig

pytest.importorskip("paho.mqtt.client", reason="the mqtt extra (paho-mqtt) is not installed")

BASE = "agpt/line1/station3"


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path).start()
    yield b
    b.stop()


def mqtt_cfg(port: int, **kw) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.2, reconnect_max_s=1.0, status_interval_s=0.2, **kw)


def wait_for(pred, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_every_result_arrives_with_status_events_and_state(bundle, broker):
    col = Collector(broker.port)
    gate = threading.Event()
    try:
        cfg = daemon_config(bundle, mqtt=mqtt_cfg(broker.port, mask=True))
        with running(cfg, source=CountingSource(n=40, gate=gate)) as d:
            sink = d.sinks.sinks[0]
            wait_for(sink.connected, what="the sink's connection")
            gate.set()
            assert d.wait(30)
        # shutdown flushed: the final status and "offline" are on the broker
        col.wait(lambda c: any(m[1] == b"offline" for m in c.on("state")), what="the clean 'offline'")
        results = [ResultHeader.model_validate_json(m[1]) for m in col.on("result")]
        assert [h.frame_id for h in results] == list(range(1, 41))
        assert all(h.prefix == "line1.station3" and h.product == "widget" for h in results)
        masks = col.on("mask")
        assert len(masks) == 40 and all(m[1][:8] == b"\x89PNG\r\n\x1a\n" for m in masks)
        kinds = [Event.model_validate_json(m[1]).kind for m in col.on("event")]
        assert kinds[0] == "started" and kinds[-1] == "stopping"
        statuses = [Status.model_validate_json(m[1]) for m in col.on("status")]
        assert statuses[-1].final and statuses[-1].frames_judged == 40
        assert [m[1] for m in col.on("state")] == [b"online", b"offline"]
        st = sink.stats()
        assert st.dropped == 0 and st.delivered == 40 + len(kinds)  # acknowledged results + events
    finally:
        col.close()
    # a late joiner gets the retained status and state at once, from the broker
    late = Collector(broker.port, f"{BASE}/+")
    try:
        late.wait(lambda c: c.on("status") and c.on("state"), what="retained status and state")
        assert all(m[2] for m in late.on("status") + late.on("state"))  # delivered as retained
        assert Status.model_validate_json(late.on("status")[-1][1]).final
    finally:
        late.close()


def test_broker_outage_keeps_judging_reconnects_and_counts_drops(bundle, broker):
    """QoS 1 with a small client buffer: during the outage paho holds max_queued results (sent after the
    reconnect) and the rest are dropped and counted; the line never waits."""
    cfg = daemon_config(bundle, mqtt=mqtt_cfg(broker.port, max_queued=20))
    with running(cfg, source=CountingSource(period=0.005)) as d:
        sink = d.sinks.sinks[0]
        wait_for(lambda: sink.connected() and d.judged > 20, what="first results")
        broker.stop()
        wait_for(lambda: not sink.connected(), what="the sink to see the outage")
        down_at = d.judged
        wait_for(lambda: d.judged > down_at + 200, what="judging during the outage")  # the line kept going
        wait_for(lambda: sink.stats().dropped > 0, what="drops during the outage")
        st = d.status().sinks["mqtt"]
        assert st.connected is False and "buffer full" in (st.last_error or "")
        assert st.queued >= 20  # what paho holds for the broker shows as queued
        col_port = broker.port
        broker.start()
        wait_for(lambda: sink.connected(), timeout=20, what="the reconnect")
        assert sink.connects >= 2
        col = Collector(col_port)
        try:
            seen = d.judged
            col.wait(lambda c: any(ResultHeader.model_validate_json(m[1]).frame_id > seen for m in c.on("result")),
                     what="results after the reconnect")  # fmt: skip
            col.wait(lambda c: c.on("state") and c.on("state")[-1][1] == b"online", what="'online' again (retained)")
        finally:
            col.close()
        dropped_live = sink.stats().dropped
    final = sink.stats()
    # every result the sink was handed is delivered (acknowledged) or counted as dropped, none unaccounted for
    assert final.dropped >= dropped_live > 0
    assert final.delivered + final.dropped >= d.judged


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from _daemon_fakes import CountingSource, FakeInspector, daemon_config
from runtime.line.daemon import Daemon
from runtime.sinks.mqtt_config import MqttConfig
cfg = daemon_config(Path({bundle!r}), publish={pub!r}, control={ctl!r},
                    mqtt=MqttConfig(port={port}, keepalive_s=5, status_interval_s=0.2))
sys.exit(Daemon(cfg, inspector=FakeInspector(delay=0.01), source=CountingSource(period=0.005)).run())
"""


def test_last_will_appears_when_the_daemon_process_is_killed(bundle, broker, tmp_path):
    col = Collector(broker.port, f"{BASE}/#")
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[1]), bundle=str(bundle), pub=f"ipc://{tmp_path}/pub", ctl=f"ipc://{tmp_path}/ctl",
        port=broker.port,
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        col.wait(lambda c: c.on("result") and c.on("state"), timeout=30, what="results and 'online'")
        assert [m[1] for m in col.on("state")] == [b"online"]
        proc.send_signal(signal.SIGKILL)  # no shutdown, no clean 'offline': only the broker's last will
        proc.wait(10)
        col.wait(lambda c: len(c.on("state")) >= 2, what="the last will")
        assert [m[1] for m in col.on("state")] == [b"online", b"offline"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        col.close()
    assert proc.returncode == -signal.SIGKILL


def test_a_broker_that_is_down_at_start_is_an_outage_not_a_refused_start(bundle, tmp_path):
    broker = Mosquitto(tmp_path)  # not started yet
    cfg = daemon_config(bundle, mqtt=mqtt_cfg(broker.port, qos=0))
    try:
        with running(cfg, source=CountingSource(period=0.005)) as d:
            sink = d.sinks.sinks[0]
            wait_for(lambda: d.judged > 20 and sink.stats().dropped > 0, what="judging without a broker")
            assert "not connected" in sink.stats().last_error or "cannot reach" in sink.stats().last_error
            broker.start()
            wait_for(sink.connected, timeout=20, what="the first connection, late")
    finally:
        broker.stop()


def test_client_id_topics_and_the_missing_extra(bundle, monkeypatch):
    from runtime.sinks import build

    cfg = MqttConfig()
    cid = cfg.derived_client_id("line1", "station3")
    assert cid.startswith("agpt-line1-station3-") and cid != cfg.derived_client_id("line1", "station4")
    assert MqttConfig(client_id="plc-7").derived_client_id("a", "b") == "plc-7"
    assert cfg.topic_base("line1", None) == "agpt/line1"
    with pytest.raises(ValueError):
        MqttConfig(topic_root="plant/#")
    with pytest.raises(ValueError):
        MqttConfig(tls={"cert_file": "c.pem"})
    # an enabled sink whose extra is missing: one clear line, before anything starts
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(AgptError, match=r"mqtt: is configured but paho.mqtt.client is not installed .*\[mqtt\]"):
        build.build_sinks(daemon_config(bundle, mqtt=MqttConfig()), None)


def test_a_missing_extra_refuses_the_start_before_the_models_load(bundle, monkeypatch):
    from runtime.line.daemon import Daemon

    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    d = Daemon(daemon_config(bundle, mqtt=MqttConfig()))  # no inspector given: start() would open the bundle's models
    opened = []
    monkeypatch.setattr(d, "open_inspector", lambda: opened.append(1))
    with pytest.raises(AgptError, match=r"mqtt: is configured but paho.mqtt.client is not installed"):
        d.start()
    assert opened == []  # refused before the (slow) model load, not after it


def test_yaml_config_names_the_bad_mqtt_field(tmp_path, bundle):
    from runtime.line.config import load_config

    f = tmp_path / "line.yaml"
    f.write_text(
        f"bundle: {bundle}\nproduct: widget\ncamera: {{kind: synthetic, source: test}}\nmqtt: {{host: broker.plant, qos: 3}}\n"
    )
    with pytest.raises(AgptError, match=r"mqtt\.qos"):
        load_config(f)
    f.write_text(
        f"bundle: {bundle}\nproduct: widget\ncamera: {{kind: synthetic, source: test}}\n"
        "mqtt: {host: broker.plant, password_file: secret.txt, tls: {ca_file: ca.pem}}\nmetrics: {port: 9464}\n"
    )
    cfg = load_config(f)
    assert cfg.mqtt.password_file == tmp_path / "secret.txt" and cfg.mqtt.tls.ca_file == tmp_path / "ca.pem"
    assert cfg.metrics.bind == "127.0.0.1"
    assert json.loads(cfg.model_dump_json())["mqtt"]["topic_root"] == "agpt"


def test_every_sink_config_field_is_documented():
    from runtime.sinks.metrics_config import MetricsConfig
    from runtime.sinks.mqtt_config import MqttTls

    for model in (MqttConfig, MqttTls, MetricsConfig):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"


def test_tls_and_credentials(bundle, tmp_path):
    from _mosquitto import make_tls

    tls = make_tls(tmp_path)
    broker = Mosquitto(tmp_path, tls=tls, users={"station3": "s3cret"}).start()
    (tmp_path / "pw").write_text("s3cret\n")
    col = Collector(broker.port, f"{BASE}/result", ca=tls["ca"], auth=("station3", "s3cret"))
    try:
        good = mqtt_cfg(broker.port, username="station3", password_file=tmp_path / "pw", tls={"ca_file": tls["ca"]})
        with running(daemon_config(bundle, mqtt=good), source=CountingSource(n=10)) as d:
            assert d.wait(20)
            col.wait(lambda c: len(c.on("result")) == 10, what="results over TLS")
        wrong = mqtt_cfg(broker.port, username="station3", password="nope", tls={"ca_file": tls["ca"]})
        with running(daemon_config(bundle, mqtt=wrong), source=CountingSource(period=0.005)) as d:
            sink = d.sinks.sinks[0]
            wait_for(lambda: "refused" in (sink.stats().last_error or ""), what="the refusal")
            wait_for(lambda: d.judged > 5, what="judging without the broker")
            assert not sink.connected()
    finally:
        col.close()
        broker.stop()


def test_two_stations_on_one_broker_keep_their_own_client_ids(bundle, broker, tmp_path):
    """Derived client ids differ per station: both stay connected (one id for both would have the broker
    kick one off whenever the other connects) and both stations' results arrive under their own topics."""
    other = make_bundle(tmp_path / "other")
    col = Collector(broker.port, "agpt/line1/+/result")
    try:
        a_cfg = daemon_config(bundle, mqtt=mqtt_cfg(broker.port))
        b_cfg = daemon_config(other, topic_prefix="line1.station4", mqtt=mqtt_cfg(broker.port))
        with running(a_cfg, source=CountingSource(n=15)) as a, running(b_cfg, source=CountingSource(n=15)) as b:
            sa, sb = a.sinks.sinks[0], b.sinks.sinks[0]
            assert sa.client_id != sb.client_id
            assert a.wait(20) and b.wait(20)
            col.wait(lambda c: len(c.on("result")) == 30, what="both stations' results")
            assert sa.connects == 1 and sb.connects == 1 and sa.connected() and sb.connected()
        by_topic = {}
        for topic, payload, *_ in col.on("result"):
            by_topic.setdefault(topic, []).append(ResultHeader.model_validate_json(payload).frame_id)
        assert by_topic == {f"{BASE}/result": list(range(1, 16)), "agpt/line1/station4/result": list(range(1, 16))}
    finally:
        col.close()
