"""What the daemon says and hears: versioned pydantic models for every message, and the control requests.

Published (ZeroMQ PUB, multipart):
  <prefix>.result  [topic, ResultHeader JSON, mask PNG]   one per judged frame
  <prefix>.status  [topic, Status JSON]                   heartbeat, and at once to a new status subscriber
  <prefix>.event   [topic, Event JSON]                    changeover, camera lost/back, errors ...
  <prefix>.preview [topic, PreviewHeader JSON, JPEG]      downscaled judged frames, rate-limited, only while
                                                          someone subscribes to exactly <prefix>.preview (agpt view)
Every message has a per-topic `seq` (1, 2, 3 ...): a gap is a message this subscriber lost (slow reader,
high-water mark). `frame_id` gaps are frames the daemon did not judge, each counted in `drops`.
Several cameras: frame ids, products, banks and a result's `drops` are per camera (the header's `camera`).

Control (ZeroMQ ROUTER; a REQ or DEALER client sends one JSON frame, gets one Reply JSON frame).
docs/messages.md is generated from these models (`python -m runtime.line.messages > docs/messages.md`; a test checks it).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from runtime.names import CAMERA_RE, PRODUCT_RE

SCHEMA_VERSION = 1

EVENT_KINDS = (
    "started", "stopping", "changeover", "swap_failed", "product_added", "paused", "resumed",
    "camera_lost", "camera_back", "camera_end", "camera_bad_frame", "judge_error",
    "golden_check", "feedback", "bank_rebuilt", "rollback", "archive_drop", "trigger_failed",
)  # fmt: skip


class FrameTransformInfo(BaseModel):
    """How the 224x224 map sits in the camera frame: resize the frame to (resized_h, resized_w), crop at (top, left)."""

    height: int = Field(description="camera frame rows")
    width: int = Field(description="camera frame columns")
    resized_h: int = Field(description="rows after the resize (shorter side -> size, or squash)")
    resized_w: int = Field(description="columns after the resize")
    top: int = Field(description="first row of the crop in the resized frame")
    left: int = Field(description="first column of the crop in the resized frame")
    size: int = Field(224, description="side of the square model frame and map")


class MaskInfo(BaseModel):
    width: int = Field(description="PNG columns (the map's, 224)")
    height: int = Field(description="PNG rows (224)")
    encoding: Literal["png"] = Field("png", description="third message frame: an 8-bit grayscale PNG")
    scale: str = Field("uint8 = round(255*map)", description="map value = pixel / 255; the map is in [0, 1], 1 = anomalous")
    frame_transform: FrameTransformInfo | None = Field(
        None, description="undo it to overlay the mask on the camera frame (runtime.tools.subscribe.mask_to_frame does)"
    )


class Drops(BaseModel):
    """Counters since the daemon started. frame_id gaps = queue + paused + failed."""

    queue: int = Field(0, description="frames replaced in the capture queue by a newer one (inspection slower than camera)")
    camera_bad: int = Field(
        0, description="frames the camera delivered empty, corrupt or with an unusable channel count (no frame_id)"
    )
    paused: int = Field(0, description="frames captured while judging was paused")
    failed: int = Field(0, description="frames whose inspection raised an error (a judge_error event names it)")
    publish: int = Field(0, description="messages the publisher could not queue (its own buffer full; a seq gap for everyone)")
    untriggered: int = Field(0, description="frames of a triggered camera (camera.trigger) that no trigger asked for")


class Truth(BaseModel):
    label: bool | None = Field(None, description="ground truth from a synthetic/labelled source: True = anomalous")
    has_mask: bool = Field(False, description="the source also knows the defect mask")


class ResultHeader(BaseModel):
    schema_version: int = SCHEMA_VERSION
    seq: int = Field(0, description="per-topic message number; a gap = messages this subscriber lost")
    frame_id: int = Field(description="per camera, 1, 2, 3 ... in capture order")
    camera: str
    line: str = Field(description="first part of the topic prefix")
    station: str | None = Field(None, description="rest of the topic prefix")
    prefix: str = Field(description="topic prefix, line.station")
    product: str = Field(description="product the frame was judged as")
    bank_id: str | None = Field(description="content id of the product pack used (changes at a changeover)")
    capture_time: float = Field(description="unix time the frame was read from the camera")
    publish_time: float = Field(description="unix time the result was handed to the publisher")
    verdict: bool | None = Field(description="True = anomalous; None when the answer had neither Yes nor No")
    p_anomaly: float | None = Field(None, description="P(Yes) / (P(Yes) + P(No)) of the first answer token, when known")
    score: float = Field(description="max of the 224x224 anomaly map (the reference's image score)")
    judge: str = Field(
        description="llm-first_token | llm-answer | calibrated-score | operating-point (the pack's tuned threshold on "
        "p_anomaly or score): what decided the verdict"
    )
    answer: str | None = Field(None, description="the LLM's answer text (answer mode)")
    locations: list[str] = Field(default_factory=list, description="3x3 cell names: 'top left' ... 'bottom right'")
    mask: MaskInfo | None = Field(None, description="the third frame; None when no map was produced (frame 3 empty)")
    latency_ms: dict[str, float] = Field(
        default_factory=dict,
        description="per stage: queue (capture -> start), preprocess, encoder, map, prompt, llm, judge (all model "
        "stages), encode (PNG), total (capture -> publish)",
    )
    drops: Drops = Field(default_factory=Drops, description="this camera's counters (publish: the daemon's)")
    truth: Truth | None = Field(None, description="present for labelled sources only")
    batch: int = Field(
        1, description="frames judged together in one batch (several cameras); the model stages' latency_ms are the whole batch's"
    )
    part_id: str | None = Field(
        None, description="the part in front of this camera, as the last set_part named it (a triggered camera: the trigger's)"
    )
    lot: str | None = Field(None, description="its lot, as the last set_part named it")


class PreviewHeader(BaseModel):
    """A downscaled camera frame for a live view; its frame_id and camera match the ResultHeader it was judged in."""

    schema_version: int = SCHEMA_VERSION
    seq: int = Field(0, description="per-topic message number")
    frame_id: int = Field(description="the judged frame (its result has the same camera and frame_id)")
    camera: str
    capture_time: float = Field(description="unix time the frame was read from the camera")
    publish_time: float = Field(description="unix time the JPEG was handed to the publisher")
    width: int = Field(description="JPEG columns (the frame scaled so its longer side <= preview_max_side)")
    height: int = Field(description="JPEG rows")
    frame_width: int = Field(description="camera frame columns (FrameTransformInfo.width)")
    frame_height: int = Field(description="camera frame rows")
    reject: bool = Field(False, description="sent because the frame was judged anomalous (rejects have their own rate limit)")
    encoding: Literal["jpeg"] = Field("jpeg", description="third message frame: a baseline JPEG")


class SinkStats(BaseModel):
    """A sink's counters, as status messages and the metrics carry them."""

    connected: bool | None = Field(None, description="the sink's link is up (None: the sink has no link)")
    queued: int = Field(0, description="items waiting in the sink's own queue")
    delivered: int = Field(0, description="results and events the sink wrote or sent")
    dropped: int = Field(0, description="results and events the sink could not queue or deliver (counted, never silent)")
    last_error: str | None = Field(None, description="the last error the sink met, one line")


class GoldenResult(BaseModel):
    """One golden image of a golden check."""

    name: str = Field(description="the golden image's file name")
    expected: Literal["good", "bad"]
    verdict: bool | None = Field(description="True = anomalous")
    p_anomaly: float | None = None
    score: float
    judge: str
    ok: bool = Field(description="the verdict is the expected one")


class GoldenCheck(BaseModel):
    """The golden images of a pack judged at start or before a changeover's first line frame."""

    product: str
    bank_id: str
    camera: str | None = Field(None, description="the camera(s) about to judge with the pack (None: all)")
    time: float = Field(description="unix time of the check")
    when: Literal["start", "changeover"]
    ok: bool = Field(description="every golden image judged as expected")
    action: Literal["passed", "warned", "refused"] = Field(
        description="passed; warned (golden: warn, the pack runs anyway); refused (golden: refuse, the old pack kept)"
    )
    images: list[GoldenResult] = Field(default_factory=list)


class CameraStatus(BaseModel):
    """One camera of the daemon (Status.cameras)."""

    name: str = Field(description="the camera's name in the config (results carry it in `camera`)")
    product: str | None = Field(description="product this camera's frames are judged as")
    bank_id: str | None = Field(description="content id of its pack")
    camera_state: Literal["opening", "open", "lost", "ended", "stopped"] = Field(description="its capture state")
    fps: float = Field(description="its judged frames per second over the last few seconds")
    queue_depth: int = Field(description="its frames waiting for inspection")
    frames_captured: int = Field(description="its last frame_id")
    frames_judged: int = Field(description="its frames judged so far")
    drops: Drops = Field(description="its counters (publish: the daemon's)")
    golden: GoldenCheck | None = Field(
        None, description="the last golden check on this camera (a refused one names the pack it refused; None: none yet)"
    )


class Status(BaseModel):
    schema_version: int = SCHEMA_VERSION
    seq: int = 0
    time: float = Field(description="unix time")
    uptime_s: float
    fps: float = Field(description="judged frames per second over the last few seconds (all cameras)")
    queue_depth: int = Field(description="frames waiting in the capture queue (all cameras)")
    drops: Drops = Field(description="counters summed over the cameras")
    product: str | None = Field(description="the (first) camera's product; each camera's in `cameras`")
    bank_id: str | None = Field(description="the (first) camera's pack id")
    camera: str = Field(description="the (first) camera's name")
    camera_state: Literal["opening", "open", "lost", "ended", "stopped"] = Field(description="the (first) camera's state")
    frames_captured: int = Field(description="last frame_id given (several cameras: summed)")
    frames_judged: int
    results_published: int = Field(
        0, description="seq of the last result: a subscriber's own losses = this - results it received (gaps and tail)"
    )
    truth_frames: int = Field(0, description="judged frames with a known label")
    accuracy: float | None = Field(None, description="running verdict accuracy over truth_frames")
    paused: bool
    errors: int = Field(0, description="judge errors so far")
    final: bool = Field(False, description="True on the last status before the daemon exits")
    cameras: list[CameraStatus] = Field(default_factory=list, description="every camera: product, bank, fps, drops")
    sinks: dict[str, SinkStats] = Field(default_factory=dict, description="each configured sink's link and counters, by name")
    golden: GoldenCheck | None = Field(None, description="the (first) camera's last golden check; each camera's in `cameras`")


class Event(BaseModel):
    schema_version: int = SCHEMA_VERSION
    seq: int = 0
    time: float
    kind: str = Field(description=", ".join(EVENT_KINDS))
    detail: dict[str, Any] = Field(default_factory=dict)


# ---- control channel ------------------------------------------------------------------------------

ProductName = Annotated[str, Field(pattern=PRODUCT_RE, description="[A-Za-z0-9][A-Za-z0-9_.-]{0,63}; no slashes")]
CameraName = Annotated[str, Field(pattern=CAMERA_RE, description="a camera's name in the config")]


class _Request(BaseModel):
    # strict: a number where a string belongs is an error, not silently converted; unknown keys are errors.
    model_config = ConfigDict(extra="forbid", strict=True)
    id: Annotated[str, Field(max_length=64)] | int | None = Field(None, description="echoed in the reply")


class StatusRequest(_Request):
    """The current Status (what a late-joining controller needs)."""

    cmd: Literal["status"]


class ListProductsRequest(_Request):
    """Products with a pack on disk or in bundle.json, and the active one."""

    cmd: Literal["list_products"]


class SwapBankRequest(_Request):
    """Load and validate the product's pack off the inspection loop, then switch between two frames."""

    cmd: Literal["swap_bank"]
    product: ProductName
    camera: CameraName | None = Field(None, description="only this camera changes over (None: every camera)")


class AddProductRequest(_Request):
    """Build a pack from normal shot images on the device (the bundle's encoder) and save it."""

    cmd: Literal["add_product"]
    name: ProductName
    description: str = Field("", max_length=1000, description="product description put before the question")
    shots: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=64, description="image paths on the device (inside shots_root when configured)"
    )
    replace: bool = Field(False, description="overwrite an existing pack of that name")
    activate: bool = Field(False, description="swap to it once saved")
    camera: CameraName | None = Field(None, description="with activate: only this camera swaps (None: every camera)")


class AskRequest(_Request):
    """An operator's follow-up question about the latest (or a kept) frame; the LLM answers."""

    cmd: Literal["ask"]
    question: str = Field(min_length=1, max_length=2000)
    frame_id: int | None = Field(None, ge=1, description="a recent frame (keep_frames are kept); None: the latest")
    camera: CameraName | None = Field(None, description="that camera's frame (frame ids are per camera); None: any camera")


class PauseRequest(_Request):
    """Stop judging (the camera keeps running; frames are counted in drops.paused)."""

    cmd: Literal["pause"]


class ResumeRequest(_Request):
    cmd: Literal["resume"]


class FeedbackRequest(_Request):
    """An operator's mark on a kept frame: a false reject (good part judged defective) or a missed defect.

    Logged with who/when into products/<product>/feedback.jsonl (and a `feedback` event the archive keeps).
    add_to_bank (false rejects only): the pack is rebuilt off the loop from its shots plus that frame and
    swapped in between two frames; the old pack stays in history/ (`rollback`)."""

    cmd: Literal["feedback"]
    frame_id: int = Field(ge=1, description="the frame's id (rejected frames are kept longer than others: keep_rejects)")
    camera: CameraName | None = Field(None, description="its camera (None: the only camera)")
    kind: Literal["false_reject", "missed_defect"]
    operator: Annotated[str, Field(min_length=1, max_length=64)] = Field(description="who marks it (logged)")
    add_to_bank: bool = Field(False, description="false_reject: add the frame to the product's normal shots")
    note: Annotated[str, Field(max_length=500)] | None = Field(None, description="free text, logged")


class RollbackRequest(_Request):
    """Put the product's previous pack back (products/<name>/history/) and swap to it where it runs."""

    cmd: Literal["rollback"]
    product: ProductName
    operator: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(None, description="who (logged)")


PartText = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", description="1-128 printable characters")
]


class SetPartRequest(_Request):
    """The part (and lot) now in front of a camera, from the line controller: the camera's next results carry it
    (ResultHeader.part_id / lot, and the archive's rows, so an audit finds every part of a lot)."""

    cmd: Literal["set_part"]
    part_id: PartText | None = Field(description="the part's id (serial, DMC, tray slot ...); None: no part known")
    lot: PartText | None = Field(None, description="its lot or batch")
    camera: CameraName | None = Field(None, description="only this camera (None: every camera)")


class TriggerRequest(_Request):
    """A triggered camera (camera.trigger) judges its next frame as this part: exactly one result carries the
    part id, or a trigger_failed event names it (camera lost, trigger_timeout_s passed, daemon stopping)."""

    cmd: Literal["trigger"]
    part_id: PartText = Field(description="the part in front of the camera now")
    camera: CameraName | None = Field(None, description="the triggered camera (None: the only triggered one)")


Request = Annotated[
    StatusRequest | ListProductsRequest | SwapBankRequest | AddProductRequest | AskRequest | PauseRequest | ResumeRequest
    | FeedbackRequest | RollbackRequest | SetPartRequest | TriggerRequest,
    Field(discriminator="cmd"),
]  # fmt: skip
REQUEST_MODELS = typing.get_args(typing.get_args(Request)[0])
_REQUEST = TypeAdapter(Request)


class Reply(BaseModel):
    ok: bool
    id: str | int | None = Field(None, description="the request's id")
    error: str | None = Field(None, description="one line, when ok is false")
    data: dict[str, Any] | None = Field(None, description="the answer, when ok is true")


class RequestError(Exception):
    def __init__(self, message: str, req_id: str | int | None = None):
        super().__init__(message)
        self.req_id = req_id


def parse_request(raw: bytes, max_bytes: int = 1 << 20) -> Request:
    """Bytes from a client -> a validated request, or RequestError with a one-line reason (never anything else)."""
    if len(raw) > max_bytes:
        raise RequestError(f"request of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(raw)
    except Exception as e:  # bad UTF-8, bad JSON, nesting too deep (RecursionError)
        raise RequestError(f"not JSON: {type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise RequestError(f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    rid = (
        rid
        if (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**63) or (isinstance(rid, str) and len(rid) <= 64)
        else None
    )
    if "cmd" not in obj:
        raise RequestError(
            "missing 'cmd' (" + ", ".join(m.model_fields["cmd"].annotation.__args__[0] for m in REQUEST_MODELS) + ")", rid
        )
    try:
        return _REQUEST.validate_python(obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if loc and loc[0] == obj.get("cmd"):  # pydantic puts the union tag first
            loc = loc[1:]
        where = ".".join(loc)
        raise RequestError((f"{where}: " if where else "") + str(first["msg"])[:300], rid) from None
    except Exception as e:  # pragma: no cover - pydantic raises ValidationError; belt and braces
        raise RequestError(f"invalid request: {type(e).__name__}", rid) from None


# ---- docs/messages.md ------------------------------------------------------------------------------


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Annotated:
        return _type_name(typing.get_args(t)[0])
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(t))
    if origin is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(t))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if t is type(None):
        return "null"
    return getattr(t, "__name__", str(t))


def _table(model: type[BaseModel]) -> str:
    rows = [f"### {model.__name__}", ""]
    if model.__doc__ and model.__doc__ != BaseModel.__doc__:
        rows += [model.__doc__.strip().splitlines()[0], ""]
    rows += ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        desc = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(f.annotation)} | {default} | {desc} |")
    return "\n".join(rows) + "\n"


SUBSCRIBER_EXAMPLE = """\
import json, zmq, numpy as np, cv2

ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect("tcp://127.0.0.1:5555")                      # the daemon's `publish` endpoint
sub.setsockopt(zmq.SUBSCRIBE, b"line1.station1.result")  # <topic_prefix>.result
while True:
    topic, header, png = sub.recv_multipart()
    h = json.loads(header)
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE) if png else None
    if h["verdict"]:                                     # True = anomalous
        print("REJECT", h["frame_id"], h["product"], h["locations"], round(h["score"], 3))
        defect = mask >= round(255 * 0.5)                # map >= 0.5, in the 224x224 model frame
    else:
        print("ok", h["frame_id"])
"""


def schema_markdown() -> str:
    parts = [
        f"# Daemon messages (schema version {SCHEMA_VERSION})",
        "",
        "<!-- generated by `python -m runtime.line.messages > docs/messages.md`; tests/line/test_daemon_messages.py checks it -->",
        "",
        "```",
        __doc__.split("\n", 2)[2].split("\nControl (")[0].rstrip(),
        "```",
        "",
        "Topics match by prefix in ZeroMQ: subscribe to the full topic (`line1.station1.result`), since",
        "`line1.station1` would also match `line1.station10.result`. JSON is UTF-8; times are unix seconds.",
        "",
        "## A subscriber a line controller can copy",
        "",
        "```python",
        SUBSCRIBER_EXAMPLE.rstrip(),
        "```",
        "",
        "`runtime.tools.subscribe.ResultSubscriber` does the same, counts lost messages from `seq` gaps, and",
        "`mask_to_frame` maps the mask onto the camera frame. `agpt subscribe ENDPOINT` prints one line per frame.",
        "",
        "A controller that joins late gets the current Status at once (the publisher re-sends the last status when",
        'a new subscription to `<prefix>.status` arrives), or asks `{"cmd": "status"}` on the control channel.',
        "",
        "## Published messages",
        "",
    ]
    for m in (ResultHeader, MaskInfo, FrameTransformInfo, Drops, Truth, Status, CameraStatus, SinkStats, Event, PreviewHeader):
        parts.append(_table(m))
    parts += [
        "## Control requests",
        "",
        "One JSON object per request, selected by `cmd`; unknown keys, wrong types, unknown commands and",
        'malformed JSON get `{"ok": false, "error": ...}`. Messages over `max_message_bytes` disconnect the sender.',
        "",
        '    {"cmd": "swap_bank", "product": "cookie", "id": 7}  ->  {"ok": true, "id": 7, "data": {...}}',
        "",
    ]
    for m in (*REQUEST_MODELS, Reply):
        parts.append(_table(m))
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
