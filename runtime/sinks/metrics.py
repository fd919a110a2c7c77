"""Prometheus metrics: an HTTP /metrics endpoint (prometheus-client) from this sink's own registry.

Two sources, so every figure has one owner:
  - results and events, counted as they are handed over (frames judged, verdicts, per-stage latency and
    p_anomaly histograms, events by kind). Observing a histogram is a few microseconds under a lock, so this
    sink needs no worker thread and no queue: submit_* updates the counters on the loop and returns.
  - the daemon's Status, read at scrape time through status_fn (daemon.status()): drops by cause, camera state
    and fps, queue depth, every sink's link and counters (Status.sinks: archive, MQTT, OPC UA ...), judge errors.
    Counters that the status owns are never counted twice here, so the endpoint and the status agree.
Process memory and CPU come from prometheus_client's ProcessCollector (process_resident_memory_bytes, ...).

The registry is this sink's own, not prometheus_client's global one: two daemons in one process (the tests)
or a library that registers its own metrics never collide with ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from runtime.errors import AgptError
from runtime.line.messages import SinkStats, Status
from runtime.sinks.base import Sink, SinkEvent, SinkResult
from runtime.sinks.metrics_config import MetricsConfig

log = logging.getLogger("agpt.sinks.metrics")

try:  # the `metrics` extra; build_sinks turns its absence into one clear AgptError line
    from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ModuleNotFoundError:  # pragma: no cover
    CollectorRegistry = None

# stage latencies run from ~0.1 ms (PNG encode) to seconds (a whole LLM answer)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
P_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 10)) + (0.95, 0.99, 1.0)
CAMERA_STATES = ("opening", "open", "lost", "ended", "stopped")


class _StatusCollector:
    """Everything the Status owns, turned into metric families at each scrape."""

    def __init__(self, status_fn: Callable[[], Status]):
        self.status_fn = status_fn

    def describe(self):
        return []  # no pre-registration check: the families depend on the cameras and sinks of the moment

    def collect(self):
        try:
            st = self.status_fn()
        except Exception as e:  # a scrape must never take the daemon down; the gap shows as agpt_up 0
            log.warning("metrics: status failed: %s: %s", type(e).__name__, e)
            up = GaugeMetricFamily("agpt_up", "1 when the daemon answered the status call of this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("agpt_up", "1 when the daemon answered the status call of this scrape")
        up.add_metric([], 1)
        yield up
        g = lambda name, doc, value: _gauge(name, doc, value)
        yield g("agpt_uptime_seconds", "seconds since the daemon started", st.uptime_s)
        yield g("agpt_fps", "judged frames per second over the last few seconds, all cameras", st.fps)
        yield g("agpt_queue_depth", "frames waiting for inspection, all cameras", st.queue_depth)
        yield g("agpt_paused", "1 while judging is paused", int(st.paused))
        c = CounterMetricFamily("agpt_judge_errors", "frames whose judging failed", labels=[])
        c.add_metric([], st.errors)
        yield c
        c = CounterMetricFamily("agpt_results_published", "results handed to the ZeroMQ publisher (last result seq)")
        c.add_metric([], st.results_published)
        yield c
        drops = CounterMetricFamily(
            "agpt_drops", "a camera's frames not judged, by cause (Status.cameras[].drops)", labels=["camera", "cause"]
        )
        pub = CounterMetricFamily("agpt_publish_drops", "messages the ZeroMQ publisher could not send (Status.drops.publish)")
        pub.add_metric([], st.drops.publish)
        yield pub
        state = GaugeMetricFamily("agpt_camera_state", "1 for the camera's current capture state", labels=["camera", "state"])
        fps = GaugeMetricFamily("agpt_camera_fps", "a camera's judged frames per second", labels=["camera"])
        captured = CounterMetricFamily("agpt_frames_captured", "a camera's last frame_id", labels=["camera"])
        info = GaugeMetricFamily("agpt_camera_product", "1 for the product and pack a camera judges", labels=["camera", "product", "bank_id"])  # fmt: skip
        for cam in st.cameras:
            for cause, n in cam.drops.model_dump(exclude={"publish"}).items():  # publish is the daemon's, not per camera
                drops.add_metric([cam.name, cause], n)
            for s in CAMERA_STATES:
                state.add_metric([cam.name, s], int(cam.camera_state == s))
            fps.add_metric([cam.name], cam.fps)
            captured.add_metric([cam.name], cam.frames_captured)
            info.add_metric([cam.name, cam.product or "", cam.bank_id or ""], 1)
        yield from (drops, state, fps, captured, info)
        up_ = GaugeMetricFamily("agpt_sink_connected", "1 while a sink's link is up (sinks with a link only)", labels=["sink"])
        dropped = CounterMetricFamily("agpt_sink_dropped", "results and events a sink could not deliver", labels=["sink"])
        delivered = CounterMetricFamily("agpt_sink_delivered", "results and events a sink delivered", labels=["sink"])
        queued = GaugeMetricFamily("agpt_sink_queued", "items waiting in a sink's queue", labels=["sink"])
        for name, s in st.sinks.items():
            if s.connected is not None:
                up_.add_metric([name], int(s.connected))
            dropped.add_metric([name], s.dropped)
            delivered.add_metric([name], s.delivered)
            queued.add_metric([name], s.queued)
        yield from (up_, dropped, delivered, queued)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, doc)
    m.add_metric([], value)
    return m


class MetricsSink(Sink):
    name = "metrics"

    def __init__(self, cfg: MetricsConfig, status_fn: Callable[[], Status] | None = None):
        if CollectorRegistry is None:
            raise AgptError("metrics: needs prometheus-client (pip install 'anomalygpt-edge[metrics]')")
        self.cfg = cfg
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.frames = Counter("agpt_frames_judged", "judged frames (results published)", ["camera"], registry=r)
        self.verdicts = Counter(
            "agpt_verdicts", "verdicts by outcome and by what decided them (llm-first_token, llm-answer, calibrated-score)",
            ["camera", "verdict", "judge"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "agpt_stage_latency_seconds", "per-stage latency of each result (the header's latency_ms keys)", ["stage"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.p_anomaly = Histogram("agpt_p_anomaly", "P(anomaly) of each judged frame, when known", buckets=P_BUCKETS, registry=r)
        self.events = Counter("agpt_events", "events by kind (changeover, camera_lost, judge_error ...)", ["kind"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        if status_fn is not None:
            r.register(_StatusCollector(status_fn))
        self._children: dict[tuple, object] = {}  # labels() resolved once per label set: the loop pays a dict lookup
        self._seen = 0
        self._server = None
        self._thread = None
        self.port: int | None = None

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.cfg.port, addr=self.cfg.bind, registry=self.registry)
        except OSError as e:
            raise AgptError(f"metrics: cannot listen on {self.cfg.bind}:{self.cfg.port}: {e.strerror or e}") from None
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.cfg.bind, self.port)

    def submit_result(self, result: SinkResult) -> None:
        try:
            h = result.header
            self._child(self.frames, h.camera).inc()
            verdict = "unknown" if h.verdict is None else ("anomalous" if h.verdict else "normal")
            self._child(self.verdicts, h.camera, verdict, h.judge).inc()
            for stage, ms in h.latency_ms.items():
                self._child(self.latency, stage).observe(ms / 1e3)
            if h.p_anomaly is not None:
                self.p_anomaly.observe(h.p_anomaly)
            self._seen += 1
        except Exception as e:  # must not raise into the loop
            log.warning("metrics: result not counted: %s: %s", type(e).__name__, e)

    def submit_event(self, event: SinkEvent) -> None:
        try:
            self._child(self.events, event.kind).inc()
        except Exception as e:
            log.warning("metrics: event not counted: %s: %s", type(e).__name__, e)

    def stats(self) -> SinkStats:
        return SinkStats(connected=None, delivered=self._seen)

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
