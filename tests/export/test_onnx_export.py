"""The exported graphs against the torch modules they came from, and the bundle's refusals.

A tiny bundle (vision width 64, depth 8; text width 32) is exported once per module from random
checkpoints written in the official formats; the ONNX graphs run through runtime.pipeline.vision.VisionEngines.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from export.bundle_writer import write_manifest
from export.modeling.decoder import decoder_map
from export.modeling.fewshot import bank_from_shots
from export.modeling.fewshot import bank_map as torch_bank_map
from export.vision_modules import CheckpointPaths, load_vision_modules
from runtime.errors import AgptError
from runtime.pipeline.bundle import BundleManifest, load_bundle, sha256_file
from runtime.pipeline.maps import bank_map, peak_location
from runtime.pipeline.vision import VisionEngines

torch.set_num_threads(1)
TOL = 1e-4
LLM_HIDDEN = 64


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    """The session's tiny checkpoints (tests/conftest.py: export.tiny.make_tiny, official layout)."""
    return tiny_ckpt


@pytest.fixture(scope="module")
def mods(ckpt):
    return load_vision_modules(CheckpointPaths.resolve(ckpt))


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle):
    """The session's tiny bundle (tests/conftest.py): these same checkpoints, with the LLM (F32), so the
    manifest is the complete one. Exported once per run, not once more here; the tests only read it."""
    return tiny_bundle


@pytest.fixture(scope="module")
def engines(bundle_dir):
    return VisionEngines(load_bundle(bundle_dir), threads=1)


def _images(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 3, 224, 224)).astype(np.float32)


def _diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_manifest(bundle_dir):
    m = load_bundle(bundle_dir).manifest
    assert m.kind == "anomalygpt" and set(m.components) == {"encoder", "decoder", "prompt", "text_encoder"}
    assert [t.layer for t in m.encoder.taps] == [1, 3, 5, 7] and m.encoder.taps[0].grid == (16, 16)
    assert m.encoder.embed_dim == 32 and set(m.products) == {"cookie", "object"}
    assert np.allclose(np.linalg.norm(m.products["cookie"].text_feats, axis=1), 1.0, atol=1e-6)
    assert m.sources["imagebind"].sha256 and m.tool_versions["torch"]
    assert m.llm is not None and m.llm.n_embd == LLM_HIDDEN and (bundle_dir / m.llm.file).is_file()


@pytest.mark.parametrize("b", [1, 3])
def test_fp32_graphs_match_torch(engines, mods, bundle_dir, b):
    x = _images(b, seed=b)
    feats = np.asarray(load_bundle(bundle_dir, verify=False).manifest.products["cookie"].text_feats, np.float32)
    with torch.no_grad():
        emb_t, taps_t = mods.vision(torch.from_numpy(x))
        mdec_t = decoder_map(mods.decoder(taps_t), torch.from_numpy(feats))
        p_t, e_t = mods.learner(mdec_t), mods.proj(emb_t)
    emb, taps = engines.encode(x)
    mdec = engines.decoder_map(taps, feats)
    p, e_img = engines.prompts(mdec, emb)
    assert emb.shape == (b, 32) and [t.shape for t in taps] == [(b, 256, 64)] * 4
    assert mdec.shape == (b, 224, 224) and p.shape == (b, 18, LLM_HIDDEN) and e_img.shape == (b, 1, LLM_HIDDEN)
    assert _diff(emb, emb_t) <= TOL
    assert max(_diff(t, tt) for t, tt in zip(taps, taps_t)) <= TOL
    assert _diff(mdec, mdec_t[:, 0]) <= TOL
    assert _diff(p, p_t) <= TOL and _diff(e_img, e_t) <= TOL
    # few-shot: numpy bank map on the graph's taps vs the torch oracle on torch taps
    shots = _images(2, seed=10)
    _, shot_taps = engines.encode(shots)
    with torch.no_grad():
        _, shot_taps_t = mods.vision(torch.from_numpy(shots))
        mfs_t = torch_bank_map([t[:1] for t in taps_t], bank_from_shots(shot_taps_t))[0, 0].numpy()
    mfs = bank_map([t[0] for t in taps], [s.reshape(-1, s.shape[-1]) for s in shot_taps], [(16, 16)] * 4)
    assert _diff(mfs, mfs_t) <= TOL


def test_text_encoder_matches_torch(engines, mods):
    pytest.importorskip("instant_clip_tokenizer", reason="instant-clip-tokenizer is not installed")
    from export.modeling.clip_tokenizer import tokenize

    tok = tokenize(["a photo of a cookie.", "a photo of the damaged cookie with a long description of a crack."])
    with torch.no_grad():
        ref = mods.text(torch.from_numpy(tok)).numpy()
    assert _diff(engines.text_features(tok), ref) <= TOL


@pytest.mark.slow
def test_fp16_graphs_keep_the_peak_cell(mods, tmp_path):
    from export.onnx_export import export_encoder, export_prompt
    from runtime.pipeline.engines import open_engine

    enc = open_engine(export_encoder(mods.vision, tmp_path / "encoder.onnx", "fp16", progress=lambda *_: None).path, threads=1)
    pr = open_engine(
        export_prompt(mods.learner, mods.proj, tmp_path / "prompt.onnx", "fp16", progress=lambda *_: None).path, threads=1
    )
    x, shots = _images(2, seed=3), _images(2, seed=11)
    with torch.no_grad():
        emb_t, taps_t = mods.vision(torch.from_numpy(x))
        _, shot_t = mods.vision(torch.from_numpy(shots))
        m_t = torch_bank_map(taps_t, bank_from_shots(shot_t))
        p_t, e_t = mods.learner(m_t), mods.proj(emb_t)
    out, shot_out = enc.run({"image": x}), enc.run({"image": shots})
    taps = [out[f"tap{k}"] for k in range(4)]
    bank = [shot_out[f"tap{k}"].reshape(-1, 64) for k in range(4)]
    diffs = {"emb": _diff(out["emb"], emb_t), "taps": max(_diff(t, tt) for t, tt in zip(taps, taps_t))}
    for i in range(2):
        m = bank_map([t[i] for t in taps], bank, [(16, 16)] * 4)
        diffs[f"M_fs[{i}]"] = _diff(m, m_t[i, 0])
        assert peak_location(m) == peak_location(m_t[i, 0].numpy())
    po = pr.run({"map": m_t.numpy(), "emb": emb_t.numpy()})
    diffs |= {"P": _diff(po["prompts"], p_t), "E_img": _diff(po["img_embed"], e_t)}
    print("fp16 vs torch fp32 max abs:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert out["emb"].dtype == np.float32 and diffs["emb"] < 1e-2 and diffs["P"] < 0.05 * float(p_t.abs().max())


def test_input_validation(engines):
    with pytest.raises(AgptError, match="expected float32"):
        engines.encode(_images(1).astype(np.float64))
    with pytest.raises(AgptError, match="expected float32"):
        engines.encode(_images(1)[0])  # (3,224,224): no batch axis
    with pytest.raises(AgptError, match="expected float32"):
        engines.encode(np.zeros((1, 3, 112, 112), np.float32))
    emb, taps = engines.encode(_images(2))
    with pytest.raises(AgptError, match="batch"):
        engines.prompts(np.zeros((3, 224, 224), np.float32), emb)
    with pytest.raises(AgptError, match="text_feats"):
        engines.decoder_map(taps, np.zeros((2, 16), np.float32))


def _copy(bundle_dir, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_bundle_refuses_altered_and_missing_files(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    with open(b / "decoder.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(AgptError, match="decoder.onnx"):
        load_bundle(b)
    (b / "prompt.onnx").unlink()
    with pytest.raises(AgptError, match="prompt.onnx"):
        load_bundle(b, verify=False)


def test_mismatched_graph_is_named(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    # a graph from elsewhere, with its hash updated so only the I/O check can catch it
    shutil.copy(b / "text_encoder.onnx", b / "prompt.onnx")
    raw = json.loads((b / "bundle.json").read_text())
    raw["components"]["prompt"]["sha256"] = sha256_file(b / "prompt.onnx")
    write_manifest(b, BundleManifest.model_validate(raw))
    with pytest.raises(AgptError, match="prompt.onnx"):
        VisionEngines(load_bundle(b), threads=1, graphs=("prompt",))
    # same names, another tower's width
    raw = json.loads((bundle_dir / "bundle.json").read_text())
    raw["components"]["encoder"]["outputs"][1]["shape"][2] = 1280
    write_manifest(b, BundleManifest.model_validate(raw))
    with pytest.raises(AgptError, match="encoder.onnx"):
        VisionEngines(load_bundle(b, verify=False), threads=1, graphs=("encoder",))


def test_checkpoint_errors_are_one_line(ckpt, tmp_path):
    with pytest.raises(AgptError, match="no such file"):
        load_vision_modules(CheckpointPaths.resolve(tmp_path))
    with pytest.raises(AgptError, match="--ckpt-dir"):
        CheckpointPaths.resolve(None)


def test_runtime_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, runtime.pipeline.vision, runtime.pipeline.engines.onnxruntime, runtime.pipeline.engines.tensorrt; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_verify_report(bundle_dir, ckpt, tmp_path, capsys):
    """`agpt export verify` on image files (written here) and two normal shots."""
    from PIL import Image

    from export.verify import add_arguments, run

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(f)
        files.append(f)
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        [
            str(bundle_dir),
            "--ckpt-dir",
            str(ckpt),
            "--images",
            *map(str, files[:2]),
            "--shots",
            str(files[2]),
            "--product",
            "cookie",
            "--threads",
            "1",
            "--json",
        ]
    )
    assert run(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["images"] == 2 and r["shots"] == 1
    assert set(r["outputs"]) >= {"emb", "tap0", "tap3", "M_dec", "M_fs", "P", "E_img", "text_feats"}
    assert all(s["max_abs"] <= TOL for s in r["outputs"].values())
    assert r["cells"]["M_fs"] == [True, True]


def test_backend_guards(bundle_dir, tmp_path):
    import importlib.util

    from runtime.pipeline.engines import open_engine
    from runtime.pipeline.engines.onnxruntime import resolve_providers

    if importlib.util.find_spec("tensorrt") is None:
        f = tmp_path / "x.engine"
        f.write_bytes(b"\0")
        with pytest.raises(AgptError, match="TensorRT is not installed"):
            open_engine(f, backend="tensorrt")
    with pytest.raises(AgptError, match="unknown backend"):
        open_engine(bundle_dir / "decoder.onnx", backend="openvino")
    with pytest.raises(AgptError, match="cannot load"):
        open_engine(bundle_dir / "bundle.json")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # asked for by name, absent: an error, no CPU run
        with pytest.raises(AgptError, match="has no CUDAExecutionProvider"):
            resolve_providers(["CUDAExecutionProvider"])
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    # a bundle without engines for this device says how to build them
    with pytest.raises(AgptError, match="agpt export trt"):
        VisionEngines(load_bundle(bundle_dir, verify=False), backend="tensorrt", engine_tag="sm87-trt10.3", graphs=("encoder",))
