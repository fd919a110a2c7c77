"""`agpt export verify BUNDLE --ckpt-dir DIR --images ... [--shots ...] [--product NAME] [--json]`

Runs the torch modules (built from the checkpoints) and the bundle's graphs on the same preprocessed
images and reports, per output, the largest absolute difference and the relative one
(max |graph - torch| / max |torch|), and whether the peak 3x3 cell of each map agrees.
The graphs run end to end as on the device (each fed its own upstream outputs), so the differences
of P and E_img include those of the encoder and the map.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import load_bundle
from runtime.pipeline.prompt import FALLBACK_PRODUCT
from runtime.tools.engine_args import add_engine_arguments, backend_from_args

# What an fp32 / fp16 bundle is expected to stay within (relative to the output's largest value).
REL_TOL = {"fp32": 1e-3, "fp16": 5e-2}


def load_images(paths: list[Path]) -> np.ndarray:
    """(B,3,224,224) float32 through the runtime's reference transform (the same tensor feeds torch and the graphs)."""
    from runtime.pipeline.preprocess import load_image, preprocess

    return np.stack([preprocess(load_image(p))[0] for p in paths]).astype(np.float32)


def _stat(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise AgptError(f"graph output shape {got.shape} differs from torch {ref.shape}")
    d = float(np.abs(got - ref).max())
    return {"shape": list(ref.shape), "max_abs": d, "max_rel": d / max(float(np.abs(ref).max()), 1e-12)}


def verify_vision(
    bundle_dir: str | Path,
    paths,
    images: list[Path] | np.ndarray,
    shots: list[Path] | np.ndarray | None = None,
    product: str | None = None,
    backend="onnxruntime",
    providers: list | None = None,
    threads: int | None = None,
    bundle=None,
    mods=None,
) -> dict:
    """Compare the bundle's graphs with the torch modules on the same inputs; returns a JSON-able report.
    backend: an engine name or a BackendConfig (runtime.pipeline.engines.select opens it, as the daemon does).
    bundle / mods: the loaded bundle and vision modules when the caller already has them."""
    import torch

    from export.modeling.decoder import decoder_map
    from export.modeling.fewshot import bank_from_shots
    from export.modeling.fewshot import bank_map as torch_bank_map
    from export.modeling.text_prompts import text_features
    from export.vision_modules import load_vision_modules
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.engines.select import open_vision
    from runtime.pipeline.maps import bank_map, peak_location

    bundle = bundle or load_bundle(bundle_dir, verify=True)
    m = bundle.manifest
    mods = mods or load_vision_modules(paths, text=True)
    if not isinstance(backend, BackendConfig):
        backend = BackendConfig(engine=backend, providers=providers or ["CPUExecutionProvider"], intra_op_threads=threads)
    ve = open_vision(bundle, backend, graphs=("encoder", "decoder", "prompt"))
    engine = backend.engine
    backend = engine
    x = images if isinstance(images, np.ndarray) else load_images(list(images))
    sx = None if shots is None or len(shots) == 0 else (shots if isinstance(shots, np.ndarray) else load_images(list(shots)))
    report: dict = {
        "bundle": str(bundle.root),
        "backend": backend,
        "images": int(x.shape[0]),
        "shots": 0 if sx is None else int(sx.shape[0]),
        "outputs": {},
        "cells": {},
    }
    out = report["outputs"]

    # text features: the bundle's stored ones feed both sides; compared with a fresh torch computation
    name = product or FALLBACK_PRODUCT
    torch_feats = None
    try:
        torch_feats = text_features(mods.text, name)
    except AgptError as e:  # no tokenizer here: use the stored features only
        report["note"] = str(e)
    if name in m.products:
        feats = np.asarray(m.products[name].text_feats, np.float32)
        if torch_feats is not None:
            out["text_feats"] = _stat(feats, torch_feats)
    elif torch_feats is not None:
        feats = torch_feats
    else:
        raise AgptError(f"product '{name}' has no text features in {bundle.root} and the tokenizer is not available")
    report["product"] = name

    with torch.no_grad():
        xt = torch.from_numpy(x)
        emb_t, taps_t = mods.vision(xt)
        mdec_t = decoder_map(mods.decoder(taps_t), torch.from_numpy(feats))
        m_t = mdec_t
        if sx is not None:
            _, shot_taps_t = mods.vision(torch.from_numpy(sx))
            mfs_t = torch_bank_map(taps_t, bank_from_shots(shot_taps_t))
            m_t = mfs_t
        p_t, e_t = mods.learner(m_t), mods.proj(emb_t)

    emb, taps = ve.encode(x)
    out["emb"] = _stat(emb, emb_t.numpy())
    for k, (t, tt) in enumerate(zip(taps, taps_t)):
        out[f"tap{k}"] = _stat(t, tt.numpy())
    mdec = ve.decoder_map(taps, feats)
    out["M_dec"] = _stat(mdec, mdec_t[:, 0].numpy())
    report["cells"]["M_dec"] = [peak_location(a) == peak_location(b) for a, b in zip(mdec, mdec_t[:, 0].numpy())]
    used = mdec
    if sx is not None:
        _, shot_taps = ve.encode(sx)
        bank = [s.reshape(-1, s.shape[-1]) for s in shot_taps]
        grids = [t.grid for t in m.encoder.taps]
        mfs = np.stack([bank_map([t[i] for t in taps], bank, grids) for i in range(x.shape[0])])
        out["M_fs"] = _stat(mfs, mfs_t[:, 0].numpy())
        report["cells"]["M_fs"] = [peak_location(a) == peak_location(b) for a, b in zip(mfs, mfs_t[:, 0].numpy())]
        used = mfs
    p, e_img = ve.prompts(used, emb)
    out["P"] = _stat(p, p_t.numpy())
    out["E_img"] = _stat(e_img, e_t.numpy())

    # TensorRT engines are FP16 builds even from fp32 graphs (export/tensorrt_build.py)
    components = getattr(ve, "components", {})  # the torch engine runs the checkpoints: fp16 on CUDA
    half = engine == "tensorrt" or getattr(ve, "dtype", None) is not None and "16" in str(ve.dtype)
    half = half or any(c.precision == "fp16" for c in components.values())
    tol = REL_TOL["fp16" if half else "fp32"]
    report["rel_tolerance"] = tol
    report["ok"] = all(all(v) for v in report["cells"].values()) and all(s["max_rel"] <= tol for s in out.values())
    return report


def verify_verdicts(
    bundle_dir: str | Path, paths, images: list[Path], shots: list[Path], product: str | None, bundle=None, mods=None
) -> dict:
    """First-token verdict and location: the oracle (torch + transformers) vs the bundle (graphs + llama.cpp).
    bundle / mods: the loaded bundle and vision modules when the caller already has them."""
    from export.reference import Reference
    from runtime.pipeline.inspector import Inspector
    from runtime.pipeline.maps import peak_location
    from runtime.pipeline.preprocess import load_image
    from runtime.pipeline.products import build_pack
    from runtime.pipeline.prompt import product_question

    ref = Reference(
        imagebind=paths.imagebind, pandagpt=paths.pandagpt, anomalygpt=paths.anomalygpt, vicuna=paths.vicuna, modules=mods
    )
    insp = Inspector(bundle or load_bundle(bundle_dir), None, "first_token")
    name = product or FALLBACK_PRODUCT
    entry = insp.manifest_products.get(name)
    description = entry.description if entry else ""
    pack = build_pack(insp, name, description, shots)  # no shots: the product's text features alone
    rows = []
    for img in images:
        r = ref.run(
            img, product=name, description=description, shots=shots, question=product_question(description), max_new_tokens=1
        )
        j = insp.judge(load_image(img), pack)
        rows.append(
            {
                "p_ref": r.p_anomaly,
                "p_bundle": j.p_anomaly,
                "verdict_agrees": (r.p_anomaly > 0.5) == j.verdict,
                "location_agrees": r.peak_location == (j.locations[0] if j.locations else peak_location(j.map)),
            }
        )
    return {
        "quant": insp.bundle.manifest.llm.quant,
        "max_p_diff": max(abs(x["p_ref"] - x["p_bundle"]) for x in rows),
        "verdicts_agree": sum(x["verdict_agrees"] for x in rows),
        "locations_agree": sum(x["location_agrees"] for x in rows),
        "frames": len(rows),
    }


def format_report(r: dict) -> str:
    lines = [
        f"{r['bundle']} ({r['backend']}): {r['images']} images, {r['shots']} shots, product '{r.get('product')}'",
        f"{'output':<11} {'shape':<20} {'max abs':>10} {'max rel':>10}",
    ]
    for k, s in r["outputs"].items():
        lines.append(f"{k:<11} {str(tuple(s['shape'])):<20} {s['max_abs']:>10.2e} {s['max_rel']:>10.2e}")
    for k, v in r["cells"].items():
        lines.append(f"peak 3x3 cell of {k} agrees: {sum(v)}/{len(v)}")
    if "llm" in r:
        v = r["llm"]
        lines.append(
            f"first-token verdict agrees: {v['verdicts_agree']}/{v['frames']}, location agrees: {v['locations_agree']}/{v['frames']}, "
            f"max |P(anomaly) diff| {v['max_p_diff']:.2e} (GGUF {v['quant']})"
        )
    if "note" in r:
        lines.append(f"note: {r['note']}")
    lines.append(f"{'OK' if r['ok'] else 'MISMATCH'} (relative tolerance {r['rel_tolerance']:g})")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path)
    p.add_argument("--ckpt-dir", type=Path, help="checkpoint folder the bundle was exported from")
    p.add_argument("--imagebind", type=Path)
    p.add_argument("--pandagpt", type=Path)
    p.add_argument("--anomalygpt", type=Path)
    p.add_argument("--vicuna", type=Path, help="Vicuna folder: also compare first-token verdicts through the LLM")
    p.add_argument("--no-llm", action="store_true", help="compare the vision graphs only")
    p.add_argument("--images", type=Path, nargs="+", required=True)
    p.add_argument("--shots", type=Path, nargs="*", default=[], help="normal shots: also compare the few-shot map")
    p.add_argument("--product", help="product name for the text features (default 'object')")
    p.add_argument("--threads", type=int)
    add_engine_arguments(p)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from export.vision_modules import CheckpointPaths, load_vision_modules

    paths = CheckpointPaths.resolve(args.ckpt_dir, args.imagebind, args.pandagpt, args.anomalygpt, args.vicuna)
    bundle = load_bundle(args.bundle, verify=True)  # hashed once, the modules loaded once, for both checks
    mods = load_vision_modules(paths, text=True)
    r = verify_vision(
        args.bundle,
        paths,
        args.images,
        args.shots,
        args.product,
        backend=backend_from_args(args, intra_op_threads=args.threads),
        bundle=bundle,
        mods=mods,
    )
    if bundle.manifest.llm is not None and not args.no_llm and paths.vicuna is not None and paths.vicuna.is_dir():
        r["llm"] = verify_verdicts(args.bundle, paths, args.images, args.shots, args.product, bundle=bundle, mods=mods)
        r["ok"] = r["ok"] and r["llm"]["verdicts_agree"] == r["llm"]["frames"]
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0 if r["ok"] else 1
