"""The MQTT bridge: every result, event and status of the station to the plant broker (paho-mqtt 2.x).

Topics, under <base> = <topic_root>/<line>/<station> (the daemon's topic_prefix split at its first dot):
  <base>/result  the ResultHeader JSON, one per judged frame (QoS `qos`)
  <base>/mask    the mask PNG right after its header (only with `mask: true`; MQTT 5: frame_id/camera properties)
  <base>/event   Event JSON (changeover, camera_lost, judge_error ...)
  <base>/status  Status JSON every status_interval_s, retained: a dashboard that connects later sees it at once
  <base>/state   "online" (retained) on every connect; "offline" as the last will (the broker sends it when the
                 link dies: a killed process, a pulled cable) and on a clean stop

Threads: paho's own network thread (loop_start) connects, reconnects with backoff (reconnect_min_s doubling up
to reconnect_max_s, also for the first connection) and sends. This sink's QueuedSink worker serialises and
hands messages to paho. The inspection loop only puts into the bounded queue, so a broker outage never stalls
the line. What cannot be delivered is counted in SinkStats.dropped with the reason in last_error:
  - the sink's queue full (max_queue);
  - QoS 0 while the broker is away (paho refuses: no connection);
  - QoS 1/2 beyond max_queued messages held by paho during an outage (those within are sent after the reconnect);
  - held messages still unacknowledged when the daemon stops.
`delivered` counts results and events the broker acknowledged (QoS 0: written to the socket); `queued` the
sink's queue plus what paho holds for the broker. Status messages are not held during an outage (a stale one
is worthless): the reconnect sends "online" and a fresh status at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runtime.errors import AgptError
from runtime.line.messages import Event, Status
from runtime.sinks.base import QueuedSink, SinkEvent, SinkResult
from runtime.sinks.mqtt_config import MqttConfig

log = logging.getLogger("agpt.sinks.mqtt")

try:  # the `mqtt` extra; build_sinks turns its absence into one clear AgptError line
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
except ModuleNotFoundError:  # pragma: no cover - exercised by test_missing_extra through build_sinks
    paho = None

ONLINE, OFFLINE = b"online", b"offline"
CONTROL_ROOM = 16  # paho's buffer slots kept for state/status (results and events are bounded by max_queued themselves)
DATA = ("result", "mask", "event")  # what max_queued bounds


class MqttSink(QueuedSink):
    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        line: str,
        station: str | None,
        status_fn: Callable[..., Status] | None = None,
        status_interval_s: float = 1.0,
    ):
        if paho is None:
            raise AgptError("mqtt: needs paho-mqtt 2.x (pip install 'anomalygpt-edge[mqtt]')")
        super().__init__(cfg.max_queue, thread_name="sink-mqtt")
        self.cfg = cfg
        self.base = cfg.topic_base(line, station)
        self.client_id = cfg.derived_client_id(line, station)
        self.status_fn = status_fn
        self.status_interval_s = cfg.status_interval_s or status_interval_s
        self._next_status = 0.0
        self._connected = threading.Event()
        self._connects = 0  # successful connections (1 = the first; more = reconnects)
        self._pending: dict[int, str] = {}  # mid -> kind, messages paho holds until the broker acknowledges them
        self._held = 0  # results, masks and events in _pending (what max_queued bounds)
        self._acked_early: set[int] = set()  # acknowledged before _publish registered them (paho's thread is fast)
        self._pending_lock = threading.Lock()
        self._event_seq = 0
        self.client = self._make_client()

    def topic(self, kind: str) -> str:
        return f"{self.base}/{kind}"

    # ---- the paho client ------------------------------------------------------------------------------

    def _make_client(self):
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            **({} if v5 else {"clean_session": True}),
        )
        if cfg.username is not None:
            password = cfg.password
            if cfg.password_file is not None:
                try:
                    password = (cfg.password_file.read_text().splitlines() or [""])[0]
                except OSError as e:
                    raise AgptError(f"mqtt.password_file: cannot read {cfg.password_file}: {e.strerror or e}") from None
            c.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            try:
                c.tls_set(
                    ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                    certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                    keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                )
            except (OSError, ValueError) as e:
                raise AgptError(f"mqtt.tls: {e}") from None
            c.tls_insecure_set(cfg.tls.insecure)
        # a killed daemon (SIGKILL, power, cable) leaves this on the broker; retained, so late dashboards see it too
        c.will_set(self.topic("state"), OFFLINE, qos=cfg.status_qos, retain=True)
        c.max_inflight_messages_set(cfg.max_inflight)
        # room beyond max_queued for the state and status messages: held results must never crowd out "online"
        c.max_queued_messages_set(cfg.max_queued + CONTROL_ROOM)
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_publish = self._on_publish
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._set_error(f"broker refused the connection: {reason_code}")
            return
        self._connects += 1
        self._connected.set()
        self._publish("state", ONLINE, self.cfg.status_qos, retain=True)
        self._next_status = 0.0  # the status at once after a reconnect: the retained one may be minutes old
        if self._connects > 1:
            log.info("mqtt: reconnected to %s:%d", self.cfg.host, self.cfg.port)

    def _on_connect_fail(self, client, userdata) -> None:
        """The TCP (or TLS) connection itself failed: paho waits its backoff and tries again."""
        self._set_error(f"cannot reach the broker at {self.cfg.host}:{self.cfg.port}; retrying with backoff")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping.is_set():
            self._set_error(f"broker connection lost ({reason_code})")
            log.warning("mqtt: lost the broker at %s:%d (%s); reconnecting with backoff", self.cfg.host, self.cfg.port,
                        reason_code)  # fmt: skip

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._pending_lock:
            kind = self._pending.pop(mid, None)
            if kind is None:
                self._acked_early.add(mid)
            elif kind in DATA:
                self._held -= 1
        if kind in ("result", "event"):
            super().count_delivered(1)

    def _set_error(self, msg: str) -> None:
        with self._lock:
            self._last_error = msg[:300]

    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self):
        """queued: the sink's queue plus the results and events paho holds for the broker (an outage shows here)."""
        st = super().stats()
        st.queued += max(0, self._held)
        return st

    @property
    def connects(self) -> int:
        return self._connects

    def count_delivered(self, n: int = 1) -> None:
        """The base counts an item once handle_result returns; here only the broker's acknowledgement counts
        (_on_publish), so a message paho still holds is never reported as delivered."""

    def _publish(self, kind: str, payload: bytes, qos: int, retain: bool = False, properties=None) -> bool:
        """Hand one message to paho; False (and counted when it is a result or an event) when paho refuses it."""
        if kind in DATA and qos > 0 and self._held >= self.cfg.max_queued:  # read without the lock: a bound, not a count
            if kind != "mask":  # a mask without its header is not counted twice
                self.count_dropped(1, f"client buffer full ({self.cfg.max_queued} messages held)")
            return False
        # not under _pending_lock: paho's thread holds its own locks while it calls _on_publish, which takes ours
        info = self.client.publish(self.topic(kind), payload, qos=qos, retain=retain, properties=properties)
        rc = info.rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            # QoS 1/2 without a link: paho holds it (within max_queued) and sends it after the reconnect
            with self._pending_lock:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                    if kind in ("result", "event"):
                        super().count_delivered(1)
                else:
                    self._pending[info.mid] = kind
                    self._held += kind in DATA
            return True
        if kind in ("result", "event"):
            why = {
                MQTTErrorCode.MQTT_ERR_NO_CONN: "broker not connected (QoS 0 is not held)",
                MQTTErrorCode.MQTT_ERR_QUEUE_SIZE: f"client buffer full ({self.cfg.max_queued} messages held)",
            }.get(rc, f"publish failed: {rc}")
            self.count_dropped(1, why)
        return False

    # ---- the sink ---------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as e:
            raise AgptError(f"mqtt: cannot connect to {self.cfg.host}:{self.cfg.port}: {e}") from None
        self.client.loop_start()  # connects (and keeps retrying) in paho's thread: a broker down at start is an outage too
        super().start()

    def handle_result(self, result: SinkResult) -> None:
        h = result.header
        if self._publish("result", h.model_dump_json().encode(), self.cfg.qos) and self.cfg.mask and result.mask_png:
            props = None
            if self.cfg.protocol == "5":
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                props = Properties(PacketTypes.PUBLISH)
                props.ContentType = "image/png"
                props.UserProperty = [("frame_id", str(h.frame_id)), ("camera", h.camera), ("seq", str(h.seq))]
            self._publish("mask", result.mask_png, self.cfg.qos, properties=props)
        self._status_due()

    def handle_event(self, event: SinkEvent) -> None:
        self._event_seq += 1
        e = Event(seq=self._event_seq, time=event.time, kind=event.kind, detail=event.detail)
        self._publish("event", e.model_dump_json().encode(), self.cfg.qos)
        self._status_due()

    def idle(self) -> None:
        self._status_due()

    def _status_due(self, final: bool = False) -> None:
        if self.status_fn is None or not (final or time.monotonic() >= self._next_status):
            return
        if not self._connected.is_set():  # a held status would be stale at the reconnect, which sends a fresh one
            return
        self._next_status = time.monotonic() + self.status_interval_s
        st = self.status_fn(final=final) if final else self.status_fn()
        self._publish("status", st.model_dump_json().encode(), self.cfg.status_qos, retain=True)

    def close(self) -> None:
        """A clean stop: the final status and "offline" (a clean disconnect does not fire the will), then wait
        up to the stop's timeout for held messages; what is still unacknowledged is counted as dropped."""
        try:
            if self._connected.is_set():
                self._status_due(final=True)
                self._publish("state", OFFLINE, self.cfg.status_qos, retain=True)
            deadline = time.monotonic() + min(self._stop_timeout, 5.0)
            while self._connected.is_set() and time.monotonic() < deadline:
                with self._pending_lock:
                    if not self._pending:
                        break
                time.sleep(0.01)
        finally:
            with self._pending_lock:
                left = sum(1 for k in self._pending.values() if k in ("result", "event"))
                self._pending.clear()
                self._held = 0
            if left:
                self.count_dropped(left, "not acknowledged by the broker before the stop")
            self.client.disconnect()
            self.client.loop_stop()
