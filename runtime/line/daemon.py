"""`agpt run --config FILE`: the on-line inspection daemon, wired and run.

Threads and who owns what:
  capture    one per camera: source -> preprocessing (inspector.prepare) -> the camera's slot of
             runtime.line.slots.CameraSlots (one waiting frame; a live camera's newer frame replaces it, counted)
  loop       (loop.py) owns the inspector and the packs: ready frames -> judge -> publisher and sinks; between
             two frames it runs queued tasks (apply a swapped pack, build a bank, answer 'ask')
  publisher  owns the XPUB socket: results, events, status heartbeat (status.py)
  control    owns the ROUTER socket: parses requests; commands.py answers fast ones and hands slow ones on
  loader     one worker (commands.py): reads and validates packs and shot images off the loop
  sinks      each its own worker (runtime/sinks): archive, MQTT, OPC UA ... fed without ever blocking the loop
A changeover therefore never stalls the line while a pack loads, and never mixes two packs in one frame:
the loop reads the camera's pack once per frame, and a swap replaces that reference between frames
(changeover.py). One camera is a line of one camera: every camera is a Lane (lanes.py), judged by the same
loop, in batches when several are ready.

The preprocessing runs on the capture thread so that it overlaps the models on the loop (on 2 cores,
tiny bundle: one camera goes from ~67 to ~95 frames/s); a live camera faster than inspection then also
preprocesses the frames that are dropped, which `fps_limit` bounds.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from runtime.errors import AgptError
from runtime.line import changeover, trigger, watchdog
from runtime.line import status as status_mod
from runtime.line.camera import Camera
from runtime.line.commands import Commands
from runtime.line.config import DaemonConfig, check_security, load_config
from runtime.line.control import ControlServer, start_authenticator
from runtime.line.lanes import KeptFrame, Lane
from runtime.line.loop import InspectionLoop
from runtime.line.messages import Drops, Status
from runtime.line.preview import PreviewGate, attach_preview
from runtime.line.publish import Publisher
from runtime.line.slots import CameraSlots, SlotQueue
from runtime.line.sources import Source
from runtime.line.status import Heartbeat
from runtime.pipeline.products import ProductPack
from runtime.pipeline.store import ProductStore
from runtime.sinks.base import SinkEvent
from runtime.sinks.build import build_sinks, require_extras
from runtime.sinks.fanout import Fanout

log = logging.getLogger("agpt.daemon")

# stops that are not failures: asked for (signal, control, shutdown()), the frame limit, a finite source's end
CLEAN_STOPS = ("requested", "shutdown", "SIGTERM", "SIGINT", "frames", "camera_end")


class Daemon:
    def __init__(self, cfg: DaemonConfig, inspector: Any = None, source: Source | None = None, ctx: zmq.Context | None = None,
                 sources: Any = None, store: ProductStore | None = None):  # fmt: skip
        """source: the (first) camera's source instead of the config's; sources: several cameras' sources, a list
        in config order or a dict by camera name (missing ones come from the config); store: the product store
        (default: the bundle's products folder)."""
        check_security(cfg)
        self.cfg = cfg
        self.inspector = inspector
        cams = cfg.camera_list
        self.lanes = [Lane(i, c, cfg.camera_product(c)) for i, c in enumerate(cams)]
        self._sources = self._sources_by_lane(cams, source, sources)
        self._ctx = ctx
        self._own_ctx = ctx is None
        self.paused = threading.Event()
        if cfg.start_paused:
            self.paused.set()
        # totals over the cameras (each Lane keeps its own)
        self.judged = 0
        self.errors = 0
        self.truth_frames = 0
        self.truth_correct = 0
        self.stop_reason: str | None = None
        self.kept: collections.deque[KeptFrame] = collections.deque(maxlen=cfg.keep_frames * len(self.lanes))
        self.stopping = threading.Event()
        self._shut = False
        self._auth = None
        self.started = 0.0
        self.slots: CameraSlots | None = None
        self.max_batch = 1
        self.store = store
        self.publisher: Publisher | None = None
        self.preview: PreviewGate | None = None  # <prefix>.preview, made only while subscribed (runtime/line/preview.py)
        self.control: ControlServer | None = None
        self.sinks = Fanout()  # start() builds the configured ones
        self.triggers = trigger.TriggerBook(cams)  # triggered cameras: pending triggers, untriggered drops
        self.loop = InspectionLoop(self)
        self.commands = Commands(self)
        self.heartbeat = Heartbeat(self)
        self._loop_thread: threading.Thread | None = None

    @staticmethod
    def _sources_by_lane(cams: list, source: Source | None, sources: Any) -> list:
        if isinstance(sources, dict):
            unknown = set(sources) - {c.name for c in cams}
            if unknown:
                raise AgptError(f"sources for unknown cameras: {', '.join(sorted(unknown))}")
            return [sources.get(c.name) for c in cams]
        if sources is not None:
            if len(sources) != len(cams):
                raise AgptError(f"{len(sources)} sources for {len(cams)} cameras")
            return list(sources)
        return [source] + [None] * (len(cams) - 1)

    # the first camera's state, for callers that think of one camera
    @property
    def pack(self) -> ProductPack | None:
        return self.lanes[0].pack

    @property
    def camera(self) -> Camera | None:
        return self.lanes[0].camera

    @property
    def last_frame_id(self) -> int:
        return self.lanes[0].last_frame_id

    @property
    def multi(self) -> bool:
        """Several cameras (for reports only: no code path branches on it)."""
        return len(self.lanes) > 1

    @property
    def batch_retries(self) -> int:
        return self.loop.batch_retries

    def lane(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise AgptError(f"no camera {name!r} (cameras: {', '.join(l.name for l in self.lanes)})")

    # ---- start / stop -------------------------------------------------------------------------------

    def open_inspector(self):
        """The inspector this config asks for (start() opens it when none was given): the engines backend.engine
        names (runtime.pipeline.engines.select), one LLM sequence per frame of a batch, backend.llm_ctx each."""
        from runtime.pipeline.engines.select import describe
        from runtime.pipeline.inspector import Inspector

        insp = Inspector.from_config(self.cfg.bundle, self.cfg.backend, self.cfg.verdict_mode, max_batch=self._batch_limit())
        log.info("engine %s: %s", self.cfg.backend.engine, describe(insp.vision))
        return insp

    def _batch_limit(self) -> int:
        return min(len(self.lanes), self.cfg.max_batch or len(self.lanes))

    def _manifest_products(self) -> dict:
        products = getattr(self.inspector, "manifest_products", None)
        if products is not None:
            return dict(products)
        bundle = getattr(self.inspector, "bundle", None)
        if bundle is None:
            try:
                from runtime.pipeline.bundle import load_bundle

                bundle = load_bundle(self.cfg.bundle, verify=False)
            except AgptError:
                return {}
        return dict(bundle.manifest.products)

    def start(self) -> None:
        cfg = self.cfg
        require_extras(cfg)  # one line now, not after the models have loaded
        if cfg.backend.blas_threads is not None:
            from runtime.pipeline.blas import set_blas_threads

            set_blas_threads(cfg.backend.blas_threads)
        if self.inspector is None:
            self.inspector = self.open_inspector()
        if self.store is None:
            self.store = ProductStore(cfg.bundle / "products", self.inspector.pack_spec, self._manifest_products())
        for lane in self.lanes:
            lane.pack = changeover.initial_pack(self, lane)
        changeover.check_at_start(self)  # golden images, before any socket or frame (refuse: no start)
        self.sinks = Fanout(build_sinks(cfg, self))
        self.sinks.start()  # a sink that cannot start (bad URL, missing extra) refuses the start, before any bind
        self._open_sockets()
        self.preview = attach_preview(self.publisher, cfg)
        # each camera's thread preprocesses its frames: that work overlaps the models on the inspection loop
        prepare = getattr(self.inspector, "prepare", None)
        self.slots = CameraSlots(len(self.lanes))
        self.max_batch = max(1, min(self._batch_limit(), int(getattr(self.inspector, "max_batch", len(self.lanes)))))
        for lane, src in zip(self.lanes, self._sources):
            slot = SlotQueue(self.slots, lane.index, lane.cfg.when_full)
            lane.camera = Camera(lane.cfg, src, on_event=self._camera_event, queue=slot, prepare=prepare)
        self.started = time.monotonic()
        self.publisher.start()
        self.control.start()
        for lane in self.lanes:
            lane.camera.start()
        self._loop_thread = threading.Thread(target=self.loop.run, name="inspect", daemon=True)
        self._loop_thread.start()
        first = self.lanes[0]
        self.event("started", {"product": first.pack.name, "bank_id": first.pack.bank_id, "camera": first.name,
                               "cameras": {l.name: {"product": l.pack.name, "bank_id": l.pack.bank_id} for l in self.lanes}})  # fmt: skip
        changeover.announce_start_checks(self)
        for lane in self.lanes:
            log.info("inspecting %s as %s (bank %s)", lane.name, lane.pack.name, lane.pack.bank_id)
        log.info("results on %s, control on %s; %d camera(s), batches of up to %d", self.publisher.endpoint,
                 self.control.endpoint, len(self.lanes), self.max_batch)  # fmt: skip
        self.heartbeat.ready = True  # from now on the heartbeat feeds systemd's watchdog (never before READY)
        watchdog.notify(watchdog.READY)

    def _open_sockets(self) -> None:
        cfg = self.cfg
        self._ctx = self._ctx or zmq.Context()
        curve_key = None
        if cfg.curve is not None:
            self._auth = start_authenticator(self._ctx, cfg.curve.authorized_clients)
            curve_key = cfg.curve.server_secret_key
        try:
            self.publisher = Publisher(
                self._ctx, cfg.publish, cfg.topic_prefix, cfg.sndhwm, cfg.max_message_bytes, cfg.heartbeat_s,
                self.heartbeat, curve_key if (cfg.curve is None or cfg.curve.results) else None,
            )  # fmt: skip
            self.control = ControlServer(self._ctx, cfg.control, self.commands.handle, cfg.max_message_bytes, curve_key)
        except zmq.ZMQError as e:
            self.sinks.stop(timeout=1.0)
            self._close_zmq()
            raise AgptError(f"cannot bind {cfg.publish if self.publisher is None else cfg.control}: {e}") from None

    @property
    def publish_endpoint(self) -> str:
        return self.publisher.endpoint

    @property
    def control_endpoint(self) -> str:
        return self.control.endpoint

    def wake(self) -> None:
        """Let the loop's wait for a frame return now (a task is queued, or a stop)."""
        if self.slots is not None:
            self.slots.wake()

    def request_stop(self, reason: str = "requested") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping.set()
        self.wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self.loop.done.wait(timeout)

    def shutdown(self) -> None:
        """After the loop ended (or to force it): stop capture and control, publish the final status, close."""
        if self._shut:
            return
        self._shut = True
        self.request_stop(self.stop_reason or "shutdown")
        watchdog.notify(watchdog.STOPPING)
        if self._loop_thread is not None:
            self._loop_thread.join()  # the frame (batch) in flight finishes first
        for lane in self.lanes:
            if lane.camera is not None:
                lane.camera.stop()
        if self.slots is not None:
            self.slots.close()
        self.commands.stop()  # before control: a swap the loader still runs must see the loop gone, not hang
        if self.control is not None:
            self.control.stop()
        if self.preview is not None:
            self.preview.stop()
        if self.publisher is not None:
            trigger.fail_all(self, "stopping")  # every accepted trigger ends in a result or a failure, also here
            self.event("stopping", {"reason": self.stop_reason, "frames_judged": self.judged})
            self.publisher.stop(final_status=self.status(final=True))
        self.sinks.stop()  # after the final events: the archive records the stop too
        self._close_zmq()
        log.info("stopped (%s) after %d judged frames", self.stop_reason, self.judged)

    def _close_zmq(self) -> None:
        for s in (self.publisher, self.control):
            if s is not None and not s.sock.closed:
                s.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set() and self.stop_reason in ("SIGTERM", "SIGINT"):
            # a second signal while the first one's shutdown is stuck (a frame that never ends): give up now
            log.error("%s during shutdown: exiting without finishing", name)
            os._exit(1)
        log.info("%s: finishing the frame in flight, then stopping", name)
        self.request_stop(name)

    def run(self) -> int:
        """Foreground: start, serve until SIGTERM/SIGINT, the frame limit or the end of a finite source."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self.loop.done.wait(0.2):
                pass
        finally:
            self.shutdown()
            for sig, h in old.items():
                signal.signal(sig, h)
        return self.exit_code

    @property
    def exit_code(self) -> int:
        """0 for a stop someone asked for or a run that is done; 1 otherwise (systemd's Restart=on-failure and
        Docker's on-failure policy restart the station only when the exit says it failed)."""
        return 0 if self.stop_reason in CLEAN_STOPS else 1

    # ---- what the other parts call ---------------------------------------------------------------------

    def call_in_loop(self, fn):
        return self.loop.call(fn)

    def handle(self, req):
        """A control request from any front end (the ROUTER socket, OPC UA, the operator's page)."""
        return self.commands.handle(req)

    def drops(self, lane: Lane | None = None) -> Drops:
        return status_mod.drops(self, lane)

    def status(self, final: bool = False) -> Status:
        return status_mod.status(self, final)

    def fps(self) -> float:
        return sum(l.fps() for l in self.lanes)

    def event(self, kind: str, detail: dict | None = None) -> None:
        """Every event goes out on the publisher and to every sink (the archive keeps them, MQTT forwards them)."""
        detail = dict(detail or {})
        self.publisher.publish_event(kind, detail)
        self.sinks.event(SinkEvent(kind, detail, time.time()))

    def _camera_event(self, kind: str, detail: dict) -> None:
        if self.publisher is not None:
            self.event(kind, detail)


# ---- CLI ------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="line config YAML (see configs/line-example.yaml)")
    p.add_argument("--frames", type=int, default=None, help="stop after N judged frames")
    p.add_argument("--product", default=None, help="override the config's initial product")
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, frames=args.frames, product=args.product, log_level=args.log_level)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    d = Daemon(cfg)
    code = d.run()
    print(f"stopped ({d.stop_reason}): {d.judged} frames judged, drops {d.drops().model_dump()}", flush=True)
    return code
