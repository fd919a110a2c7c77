"""A changeover: a new pack for some cameras, applied between two frames, remembered for a restart.

The pack was loaded and validated off the loop (commands.py); here it only replaces each camera's pack
reference on the loop thread, so no frame ever sees two packs, and `.active.json` records it.

Golden check (golden.py): a pack with golden images has them judged in the same loop task, just before the
swap, so the pack never judges a line frame before its check; with `golden: refuse` a misjudged golden
image refuses the changeover (GoldenRefused, the old pack keeps running). At start the check runs before
any frame is captured; a refused start does not start.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runtime.errors import AgptError
from runtime.line import golden
from runtime.line.lanes import Lane
from runtime.line.messages import Reply
from runtime.pipeline.products import ProductPack

log = logging.getLogger("agpt.daemon")


def apply(station: Any, pack: ProductPack, lanes: list[Lane]) -> dict:
    """On the loop thread, between two frames (batches): one reference per camera."""
    per = {}
    for lane in lanes:
        old = lane.pack
        lane.pack = pack
        info = {
            "product": pack.name,
            "bank_id": pack.bank_id,
            "previous": {"product": old.name, "bank_id": old.bank_id},
            "after_frame_id": lane.last_frame_id,
            "camera": lane.name,
        }
        station.event("changeover", info)
        log.info("changeover on %s: %s (%s) -> %s (%s) after frame %d", lane.name, old.name, old.bank_id, pack.name,
                 pack.bank_id, lane.last_frame_id)  # fmt: skip
        per[lane.name] = info
    first = per[lanes[0].name]
    out = {k: first[k] for k in ("product", "bank_id", "previous", "after_frame_id")}
    out["cameras"] = {name: {"previous": i["previous"], "after_frame_id": i["after_frame_id"]} for name, i in per.items()}
    return out


def _checked_apply(station: Any, prepared: golden.PreparedGolden, lanes: list[Lane]) -> dict | golden.GoldenCheck:
    """On the loop: the golden check, then the swap unless it is refused (the refusing check is returned)."""
    pack = prepared.pack
    check = golden.judge(station.inspector, prepared, "changeover", station.cfg.golden,
                         lanes[0].name if len(lanes) == 1 else None)  # fmt: skip
    if check is not None:
        record_check(station, check, lanes)
        if check.action == "refused":
            return check
    return apply(station, pack, lanes)


def record_check(station: Any, check: golden.GoldenCheck, lanes: list[Lane]) -> None:
    """golden_check event, status (per camera), and a log line when an image was misjudged."""
    for lane in lanes:
        lane.golden = check
    detail = check.model_dump()
    detail["cameras"] = [l.name for l in lanes]
    station.event("golden_check", detail)
    (log.info if check.ok else log.warning)("%s (%s)", golden.summary(check), check.action)


def check_at_start(station: Any) -> None:
    """Each camera's first pack's golden images, before any frame (no loop yet: the inspector is free here).
    With golden: refuse a misjudged image refuses the start (AgptError)."""
    by_bank: dict[str, list[Lane]] = {}
    for lane in station.lanes:
        by_bank.setdefault(lane.pack.bank_id, []).append(lane)
    for lanes in by_bank.values():
        prepared = golden.prepare(station.inspector, lanes[0].pack)
        check = golden.judge(station.inspector, prepared, "start", station.cfg.golden,
                             lanes[0].name if len(lanes) == 1 else None)  # fmt: skip
        if check is None:
            continue
        for lane in lanes:
            lane.golden = check
        if check.action == "refused":
            raise AgptError(golden.summary(check) + "; golden: refuse, so the station does not start")


def announce_start_checks(station: Any) -> None:
    """The start checks' golden_check events, once the publisher exists."""
    seen = set()
    for lane in station.lanes:
        c = lane.golden
        if c is not None and id(c) not in seen:
            seen.add(id(c))
            record_check(station, c, [l for l in station.lanes if l.golden is c])


def commit(station: Any, pack: ProductPack, load_ms: float, lanes: list[Lane]) -> Reply:
    """Golden check and apply on the loop (waits for the frame in flight), then remember it for a restart.
    GoldenRefused when the check refuses it (the old pack keeps running)."""
    t0 = time.perf_counter()
    prepared = golden.prepare(station.inspector, pack)  # decoding and preprocessing off the loop
    info = station.loop.call(lambda: _checked_apply(station, prepared, lanes)).result()
    if isinstance(info, golden.GoldenCheck):
        old = lanes[0].pack
        station.event("swap_failed", {"product": pack.name, "error": golden.summary(info), "kept": old.name,
                                      "kept_bank_id": old.bank_id, "camera": lanes[0].name if len(lanes) == 1 else None,
                                      "golden": True})  # fmt: skip
        raise golden.GoldenRefused(info)
    golden_check = lanes[0].golden if pack.golden else None
    if golden_check is not None:
        info["golden"] = {"ok": golden_check.ok, "action": golden_check.action}
    info["swap_wait_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    info["load_ms"] = round(load_ms, 3)
    try:
        station.store.set_active(pack.name, pack.bank_id, cameras={l.name: l.base_product for l in lanes})
    except OSError as e:
        info["warning"] = f"not remembered for a restart: {e}"
        log.warning("could not record the active product: %s", e)
    return Reply(ok=True, data=info)


def initial_pack(station: Any, lane: Lane) -> ProductPack:
    """The camera's config product, or the last committed changeover while the config still names the same
    product it was made from (editing the config's product wins over an old changeover)."""
    name = lane.base_product
    last = station.store.active_entry(lane.name) if station.cfg.resume_last_product else None
    if last and last.get("base") == name and last.get("product") != name:
        try:
            pack = station.store.load(last["product"])
            log.info("resuming %s with product %s (last changeover)", lane.name, pack.name)
            return pack
        except AgptError as e:
            log.warning("last committed product %s does not load (%s); starting with %s", last["product"], e, name)
    return station.store.load(name)
