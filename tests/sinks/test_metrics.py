"""The Prometheus endpoint of a running daemon: it parses as Prometheus text and its counters agree with the
daemon's status message (and, with MQTT configured, with the MQTT sink's counters)."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from _daemon_fakes import CountingSource, FakeInspector, ctl, daemon_config, make_bundle, running

from runtime.sinks.metrics_config import MetricsConfig

parser = pytest.importorskip("prometheus_client.parser", reason="the metrics extra (prometheus-client) is not installed")


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} for every sample of /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(m: dict, name: str, **match) -> float:
    return sum(v for labels, v in m.get(name, {}).items() if all(dict(labels).get(k) == x for k, x in match.items()))


def test_metrics_parse_and_agree_with_the_status(bundle):
    gate = threading.Event()
    insp = FakeInspector(fail_frames={25})  # frame 5 (value 25) fails: a judge error and a failed drop
    cfg = daemon_config(bundle, metrics=MetricsConfig(port=0))
    with running(cfg, inspector=insp, source=CountingSource(n=30, gate=gate)) as d:
        sink = d.sinks.sinks[0]
        assert sink.port and sink.port != 9464
        gate.set()
        assert d.wait(30)  # the loop is done, the endpoint still serves until shutdown
        st = d.status()
        m = scrape(sink.port)
        assert total(m, "agpt_up") == 1
        assert total(m, "agpt_frames_judged_total") == st.frames_judged == 29
        assert total(m, "agpt_frames_judged_total", camera="cam0") == 29
        assert total(m, "agpt_verdicts_total") == st.frames_judged
        assert total(m, "agpt_verdicts_total", verdict="anomalous") == 10  # every third frame is bright
        assert total(m, "agpt_judge_errors_total") == st.errors == 1
        for cause, n in st.cameras[0].drops.model_dump(exclude={"publish"}).items():
            assert total(m, "agpt_drops_total", camera="cam0", cause=cause) == n
        assert total(m, "agpt_drops_total", cause="failed") == 1
        assert total(m, "agpt_publish_drops_total") == st.drops.publish
        assert total(m, "agpt_results_published_total") == st.results_published == 29
        assert total(m, "agpt_camera_state", camera="cam0", state=st.camera_state) == 1
        assert total(m, "agpt_camera_state") == 1  # one state at a time
        assert total(m, "agpt_camera_product", product="widget") == 1
        for stage in ("queue", "llm", "judge", "encode", "total"):
            assert total(m, "agpt_stage_latency_seconds_count", stage=stage) == 29
        assert total(m, "agpt_p_anomaly_count") == 29
        assert total(m, "agpt_events_total", kind="started") == 1
        assert total(m, "agpt_events_total", kind="judge_error") == 1
        assert total(m, "process_resident_memory_bytes") > 10e6
        assert total(m, "agpt_sink_delivered_total", sink="metrics") == 29
        assert m.get("agpt_sink_connected", {}) == {}  # no sink with a link configured
    with pytest.raises(OSError):  # stopped with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=2)


def test_two_daemons_in_one_process_keep_their_own_registries(bundle, tmp_path):
    other = make_bundle(tmp_path / "other")
    with running(daemon_config(bundle, metrics=MetricsConfig(port=0)), source=CountingSource(n=5)) as a:
        with running(daemon_config(other, metrics=MetricsConfig(port=0)), source=CountingSource(n=7)) as b:
            assert a.wait(20) and b.wait(20)
            ma, mb = scrape(a.sinks.sinks[0].port), scrape(b.sinks.sinks[0].port)
    assert total(ma, "agpt_frames_judged_total") == 5 and total(mb, "agpt_frames_judged_total") == 7


def test_sink_link_state_and_drops_appear_as_metrics(bundle, tmp_path):
    """With MQTT pointed at a port nobody listens on (QoS 0): the endpoint shows it down and its drops, equal to
    the status' once the daemon is paused."""
    pytest.importorskip("paho.mqtt.client", reason="the mqtt extra (paho-mqtt) is not installed")
    from _mosquitto import free_port

    from runtime.sinks.mqtt_config import MqttConfig

    mq = MqttConfig(port=free_port(), qos=0, reconnect_min_s=0.2, reconnect_max_s=0.5)
    cfg = daemon_config(bundle, mqtt=mq, metrics=MetricsConfig(port=0))
    with running(cfg, source=CountingSource(period=0.005)) as d:
        metrics = next(s for s in d.sinks.sinks if s.name == "metrics")
        deadline = time.monotonic() + 15
        while d.status().sinks["mqtt"].dropped < 10:
            assert time.monotonic() < deadline, "no MQTT drops counted"
            time.sleep(0.02)
        assert ctl(d, {"cmd": "pause"})["ok"]
        deadline = time.monotonic() + 10
        while True:  # a frame in flight at the pause may still reach the sinks: compare once nothing moves
            st = d.status()
            m = scrape(metrics.port)
            if d.status().sinks["mqtt"] == st.sinks["mqtt"] and st.sinks["mqtt"].queued == 0:
                break
            assert time.monotonic() < deadline, "the counters kept moving while paused"
        assert total(m, "agpt_sink_connected", sink="mqtt") == 0
        assert total(m, "agpt_sink_dropped_total", sink="mqtt") == st.sinks["mqtt"].dropped >= 10
        assert total(m, "agpt_paused") == 1
        assert total(m, "agpt_frames_judged_total") == st.frames_judged


def test_the_grafana_dashboard_asks_only_for_metrics_the_endpoint_serves(bundle):
    """deploy/grafana-dashboard.json: every metric name in its queries is one the endpoint serves (with a
    sink that has a link, so agpt_sink_connected is there too)."""
    import json
    import re
    from pathlib import Path

    pytest.importorskip("paho.mqtt.client", reason="the mqtt extra (paho-mqtt) is not installed")
    from _mosquitto import free_port

    from runtime.sinks.mqtt_config import MqttConfig

    dash = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    wanted = {n for e in exprs for n in re.findall(r"\b((?:agpt|process)_[a-z_]+)\b", e)}
    assert len(wanted) >= 12
    cfg = daemon_config(bundle, mqtt=MqttConfig(port=free_port(), qos=0), metrics=MetricsConfig(port=0))
    with running(cfg, source=CountingSource(n=5)) as d:
        assert d.wait(20)
        served = set(scrape(next(s for s in d.sinks.sinks if s.name == "metrics").port))
    assert wanted <= served, sorted(wanted - served)
