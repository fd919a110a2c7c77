"""Product packs: build, atomic write, validated load; every corrupt pack is refused and the old one stays."""

from __future__ import annotations

import argparse
import errno
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fakes

from _daemon_fakes import ENCODER_SHA, N_TAPS, TAP_W, TEXT_DIM, FakeInspector

from runtime.errors import AgptError
from runtime.pipeline import packfile
from runtime.pipeline import products as bank
from runtime.pipeline import store as product_store
from runtime.pipeline.packfile import PACK_FILE, read_pack, write_pack
from runtime.pipeline.products import PackSpec, build_pack
from runtime.pipeline.store import ProductStore

SPEC = PackSpec(ENCODER_SHA, (TAP_W,) * N_TAPS, TEXT_DIM)


def _shots(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def store(tmp_path) -> ProductStore:
    s = ProductStore(tmp_path / "products", SPEC)
    s.save(build_pack(FakeInspector(), "widget", "a widget", _shots()))
    return s


def test_build_save_load_roundtrip(store):
    pack = store.load("widget")
    assert pack.name == "widget" and pack.description == "a widget" and pack.n_shots == 3
    assert [b.shape for b in pack.bank] == [(3 * 16, TAP_W)] * N_TAPS
    assert pack.text_feats.shape == (2, TEXT_DIM)
    assert len(pack.meta["shot_sha256s"]) == 3 and pack.meta["encoder_sha256"] == ENCODER_SHA
    again = build_pack(FakeInspector(), "widget", "a widget", _shots())
    assert again.bank_id == pack.bank_id  # content id: same shots, same id
    assert build_pack(FakeInspector(), "widget", "another text", _shots()).bank_id != pack.bank_id
    assert build_pack(FakeInspector(), "widget", "a widget", _shots(seed=1)).bank_id != pack.bank_id
    with pytest.raises(ValueError):
        pack.bank[0][0, 0] = 1.0  # packs are shared between threads: read-only


def test_build_from_image_files_and_calibrate_hook(tmp_path):
    import cv2

    paths = []
    for i, img in enumerate(_shots(2)):
        paths.append(tmp_path / f"s{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    seen = {}

    def calibrate(pack, images):
        seen["n"] = len(images)
        return {"threshold": 0.42}

    pack = build_pack(FakeInspector(), "w", "", paths, calibrate=calibrate)
    assert seen["n"] == 2 and pack.calibration == {"threshold": 0.42}
    assert pack.meta["shot_sha256s"][0] == bank.hashlib.sha256(paths[0].read_bytes()).hexdigest()
    with pytest.raises(AgptError, match="not a readable image"):
        (tmp_path / "bad.png").write_bytes(b"not an image")
        build_pack(FakeInspector(), "w", "", [tmp_path / "bad.png"])
    with pytest.raises(AgptError, match="no such image"):
        build_pack(FakeInspector(), "w", "", [tmp_path / "absent.png"])
    with pytest.raises(AgptError, match="invalid product name"):
        build_pack(FakeInspector(), "../w", "", paths)


def _rewrite(path: Path, mutate) -> None:
    """Rewrite a pack's arrays through `mutate(arrays)` (bypassing validation)."""
    with np.load(path) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    mutate(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _meta(arrays, **changes):
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


CORRUPTIONS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable pack"),
    "empty file": (lambda p: p.write_bytes(b""), "unreadable pack"),
    "not a zip": (lambda p: p.write_bytes(b"PK\x03\x04garbage" * 100), "unreadable pack"),
    "nan": (lambda p: _rewrite(p, lambda a: a.__setitem__("bank_2", np.full_like(a["bank_2"], np.nan))), "NaN"),
    "inf text": (lambda p: _rewrite(p, lambda a: a.__setitem__("text_feats", np.full((2, TEXT_DIM), np.inf, np.float32))), "NaN"),
    "wrong encoder": (lambda p: _rewrite(p, lambda a: _meta(a, encoder_sha256="0" * 64)), "another encoder"),
    "wrong width": (lambda p: _rewrite(p, lambda a: a.__setitem__("bank_1", np.zeros((5, TAP_W + 1), np.float32))), "shape"),
    "missing layer": (lambda p: _rewrite(p, lambda a: a.pop("bank_3")), "bank layers"),
    "layer gap": (lambda p: _rewrite(p, lambda a: a.__setitem__("bank_7", a.pop("bank_3"))), "not 0..K-1"),
    "float64": (lambda p: _rewrite(p, lambda a: a.__setitem__("bank_0", a["bank_0"].astype(np.float64))), "float32"),
    "no meta": (lambda p: _rewrite(p, lambda a: a.pop("meta")), "no meta"),
    "meta not json": (lambda p: _rewrite(p, lambda a: a.__setitem__("meta", np.frombuffer(b"{oops", np.uint8))), "JSON"),
    "other name": (lambda p: _rewrite(p, lambda a: _meta(a, name="gadget")), "expected 'widget'"),
    "schema": (lambda p: _rewrite(p, lambda a: _meta(a, schema=99)), "schema"),
    "extra array": (lambda p: _rewrite(p, lambda a: a.__setitem__("evil", np.zeros(3, np.float32))), "unexpected"),
    "text shape": (
        lambda p: _rewrite(p, lambda a: a.__setitem__("text_feats", np.zeros((3, TEXT_DIM), np.float32))),
        "text_feats",
    ),
    "nothing": (lambda p: _rewrite(p, lambda a: [a.pop(k) for k in list(a) if k != "meta"]), "no normal shots or text"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_packs_are_refused(store, kind):
    mutate, fragment = CORRUPTIONS[kind]
    path = store.pack_path("widget")
    mutate(path)
    with pytest.raises(AgptError) as e:
        store.load("widget")
    assert fragment in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_pickled_object_array_is_refused(store):
    path = store.pack_path("widget")
    buf = io.BytesIO()
    np.savez(buf, bank_0=np.array([{"x": 1}], dtype=object), meta=np.frombuffer(b"{}", np.uint8))
    path.write_bytes(buf.getvalue())
    with pytest.raises(AgptError, match="unreadable pack"):
        store.load("widget")


def test_half_written_temp_file_is_ignored(store):
    """A write killed before the rename leaves pack.npz.tmp-*: the committed pack still loads."""
    good = store.load("widget")
    tmp = store.pack_path("widget").with_name(PACK_FILE + ".tmp-killed")
    full = io.BytesIO()
    np.savez(full, **packfile._pack_arrays(build_pack(FakeInspector(), "widget", "new", _shots(seed=5))))
    tmp.write_bytes(full.getvalue()[:1000])
    assert store.load("widget").bank_id == good.bank_id
    assert store.names() == ["widget"]


def test_disk_full_keeps_the_old_pack(store, monkeypatch):
    old = store.load("widget")
    new = build_pack(FakeInspector(), "widget", "new", _shots(seed=3))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packfile.os, "fsync", no_space)
    with pytest.raises(AgptError, match="No space left"):
        store.save(new, replace=True)
    monkeypatch.undo()
    assert store.load("widget").bank_id == old.bank_id
    assert sorted(p.name for p in store.pack_path("widget").parent.iterdir()) == [PACK_FILE]  # no temp left behind


def test_save_refuses_overwrite_and_invalid_packs(store):
    with pytest.raises(AgptError, match="exists"):
        store.save(build_pack(FakeInspector(), "widget", "x", _shots(seed=2)))
    other_encoder = build_pack(FakeInspector(), "other", "", _shots(), encoder_sha256="1" * 64)
    with pytest.raises(AgptError, match="another encoder"):
        store.save(other_encoder)
    assert not store.pack_path("other").exists()
    with pytest.raises(AgptError, match="invalid product name"):
        store.pack_path("../../etc")


def test_lite_spec_needs_a_bank_and_manifest_products(tmp_path):
    lite = PackSpec(ENCODER_SHA, (TAP_W,) * N_TAPS, None, needs_bank=True)
    s = ProductStore(
        tmp_path / "products", lite, {"screw": {"description": "a screw", "text_feats": [[1, 0, 0, 0], [0, 1, 0, 0]]}}
    )
    with pytest.raises(AgptError, match="no decoder"):
        s.load("screw")
    s = ProductStore(
        tmp_path / "products", SPEC, {"screw": {"description": "a screw", "text_feats": [[1, 0, 0, 0], [0, 1, 0, 0]]}}
    )
    p = s.load("screw")
    assert p.bank == [] and p.text_feats.shape == (2, 4) and p.description == "a screw" and s.names() == ["screw"]
    with pytest.raises(AgptError, match="no product 'bolt'"):
        s.load("bolt")


def test_active_product_record(store):
    assert store.active_entry("cam") is None
    store.set_active("widget", "abc", cameras={"cam": "gadget"})
    e = store.active_entry("cam")
    assert e["product"] == "widget" and e["base"] == "gadget"
    assert store.active_entry("other") is None
    (store.root / product_store.ACTIVE_FILE).write_text('{"product": "../x"}')
    assert store.active_entry("cam") is None
    assert "widget" in store.names()  # .active.json is not a product


def test_active_record_of_an_old_one_camera_daemon_still_reads(store):
    import json

    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / product_store.ACTIVE_FILE).write_text('{"product": "widget", "bank_id": "abc", "base": "gadget", "time": 1.0}')
    assert store.active_entry("camera")["product"] == "widget"  # the top-level entry stands for any camera
    store.set_active("bolt", "def", cameras={"camera": "gadget"})
    written = json.loads((store.root / product_store.ACTIVE_FILE).read_text())
    assert list(written) == ["cameras"] and written["cameras"]["camera"]["product"] == "bolt"  # one format from now on


def test_write_pack_replaces_atomically(tmp_path):
    path = tmp_path / "p" / PACK_FILE
    a = build_pack(FakeInspector(), "p", "a", _shots(seed=1))
    b = build_pack(FakeInspector(), "p", "b", _shots(seed=2))
    write_pack(a, path)
    write_pack(b, path)
    assert read_pack(path, SPEC, "p").bank_id == b.bank_id
    assert zipfile.is_zipfile(path)


def _fake_bundle(tmp_path: Path) -> tuple[Path, str]:
    """bundle.json with an encoder (4 taps of width TAP_W) and no decoder; the encoder file is a stub."""
    from runtime.pipeline.bundle import BundleManifest, Component, EncoderInfo, Tap, sha256_file

    root = tmp_path / "bundle"
    root.mkdir()
    (root / "encoder.onnx").write_bytes(b"stub")
    sha = sha256_file(root / "encoder.onnx")
    m = BundleManifest(
        name="fake", kind="lite", created="now",
        encoder=EncoderInfo(family="efficientnet-lite0", taps=[Tap(name=f"tap{k}", layer=k, grid=(4, 4), width=TAP_W) for k in range(N_TAPS)]),
        components={"encoder": Component(file="encoder.onnx", sha256=sha, inputs=[], outputs=[])},
    )  # fmt: skip
    (root / "bundle.json").write_text(m.model_dump_json())
    return root, sha


def test_bank_build_cli(tmp_path, monkeypatch, capsys):
    import cv2

    root, sha = _fake_bundle(tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    for i, img in enumerate(_shots(2)):
        cv2.imwrite(str(shots / f"{i}.png"), img)
    insp = FakeInspector()
    insp.encoder_sha256 = sha
    from runtime.tools import bank as bank_cli

    monkeypatch.setattr(bank_cli, "_open_inspector", lambda b, providers: insp)
    p = argparse.ArgumentParser()
    bank_cli.add_arguments(p)
    args = p.parse_args(["--bundle", str(root), "--product", "cookie", "--description", "a cookie", str(shots)])
    assert bank_cli.run(args) == 0
    assert "bank_id" in capsys.readouterr().out
    from runtime.pipeline.bundle import load_bundle

    spec = PackSpec.from_bundle(load_bundle(root))
    assert spec.needs_bank and spec.tap_widths == (TAP_W,) * N_TAPS
    pack = read_pack(root / "products" / "cookie" / PACK_FILE, spec, "cookie")
    assert pack.n_shots == 2 and pack.description == "a cookie" and pack.text_feats is not None
    with pytest.raises(AgptError, match="--replace"):
        bank_cli.run(args)
    with pytest.raises(AgptError, match="invalid product name"):
        bank_cli.run(p.parse_args(["--bundle", str(root), "--product", "../x", str(shots)]))
