"""`agpt export bundle`: checkpoints -> models/NAME/ (ONNX graphs, text features, LLM, bundle.json).

    agpt export bundle --ckpt-dir DIR --out models/mvtec --product cookie="This is a photo of a cookie ..." \
        [--precision fp16] [--no-llm] [--quant Q4_K_M]

bundle.json is written last, so a folder whose export failed half-way has no manifest and is refused
by load_bundle. Text features of the named products (and of the reference's fallback name 'object')
are computed here with the torch text tower, so the device never needs the CLIP tokenizer.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
from pathlib import Path

from export.vision_modules import CheckpointPaths, load_vision_modules
from runtime.errors import AgptError
from runtime.pipeline.bundle import (
    MANIFEST,
    BundleManifest,
    Component,
    EncoderInfo,
    FileRef,
    ProductText,
    Tap,
    load_bundle,
    sha256_file,
)
from runtime.pipeline.prompt import FALLBACK_PRODUCT


def _versions() -> dict[str, str]:
    import onnx
    import torch

    import runtime

    v = {"agpt": runtime.__version__, "python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    for mod in ("onnxruntime", "onnxscript"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v


def _ref(root: Path, p: Path) -> FileRef:
    return FileRef(file=os.path.relpath(p, root), sha256=sha256_file(p))


def _component(root: Path, g) -> Component:
    return Component(
        **_ref(root, g.path).model_dump(),
        inputs=g.inputs,
        outputs=g.outputs,
        precision=g.precision,
        external_data=[_ref(root, p) for p in g.external],
    )


def _llm(paths: CheckpointPaths, out: Path, llm: bool | None, quant: str, progress):
    """LlmInfo from export.llm_export when wanted and available, else None (with a note)."""
    if llm is False:
        return None
    if paths.vicuna is None or not paths.vicuna.is_dir():
        if llm:
            raise AgptError(f"{paths.vicuna}: no Vicuna folder (needed for the LLM; pass --vicuna DIR or --no-llm)")
        progress("note: no Vicuna folder given, bundle written without the LLM")
        return None
    try:
        from export.llm_export import export_llm
    except ImportError as e:
        progress(f"note: LLM export not available in this build ({e}); bundle written without the LLM")
        return None
    return export_llm(paths.vicuna, paths.pandagpt, out, quant, progress)


def export_bundle(
    ckpt_dir: str | Path | None = None,
    out: str | Path = "models/anomalygpt",
    *,
    imagebind=None,
    pandagpt=None,
    anomalygpt=None,
    vicuna=None,
    products: dict[str, str] | None = None,
    precision: str = "fp32",
    llm: bool | None = None,
    quant: str = "Q4_K_M",
    progress=print,
) -> Path:
    """Write a bundle folder; returns its path. llm: None = when a Vicuna folder is there, True = required, False = skip."""
    from export.modeling.text_prompts import text_features
    from export.onnx_export import export_all

    if precision not in ("fp32", "fp16"):
        raise AgptError(f"precision {precision!r}: fp32 or fp16")
    out = Path(out)
    paths = CheckpointPaths.resolve(ckpt_dir, imagebind, pandagpt, anomalygpt, vicuna)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest until everything below has succeeded

    progress(f"loading checkpoints: {paths.imagebind}, {paths.pandagpt}, {paths.anomalygpt}")
    mods = load_vision_modules(paths, text=True)
    sources = {
        k: FileRef(file=str(p), sha256=sha256_file(p))
        for k, p in (("imagebind", paths.imagebind), ("pandagpt", paths.pandagpt), ("anomalygpt", paths.anomalygpt))
    }

    product_text: dict[str, ProductText] = {}
    wanted = dict(products or {})
    wanted.setdefault(FALLBACK_PRODUCT, "")
    for name, desc in wanted.items():
        try:
            feats = text_features(mods.text, name)
        except AgptError as e:  # tokenizer missing: only fatal when the user named products
            if products:
                raise
            progress(f"note: no text features ({e})")
            break
        product_text[name] = ProductText(description=desc, text_feats=feats.tolist())
        progress(f"text features for '{name}'")

    tokenizer = _tokenizer_file(out, [*wanted, FALLBACK_PRODUCT], progress) if product_text else None
    graphs = export_all(mods, out, precision, progress)
    v = mods.vision
    encoder = EncoderInfo(
        family="imagebind",
        embed_dim=v.embed,
        taps=[Tap(name=f"tap{k}", layer=layer, grid=(v.grid, v.grid), width=v.width) for k, layer in enumerate(v.tap_layers)],
    )
    del mods

    llm_info = _llm(paths, out, llm, quant, progress)
    manifest = BundleManifest(
        name=out.name,
        kind="anomalygpt",
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        tool_versions=_versions(),
        sources=sources,
        encoder=encoder,
        components={name: _component(out, g) for name, g in graphs.items()},
        llm=llm_info,
        products=product_text,
        tokenizer=tokenizer,
    )
    write_manifest(out, manifest)
    load_bundle(out, verify=False)  # the schema and every file present (the hashes were just taken from the files)
    progress(f"bundle written: {out / MANIFEST}")
    return out


def _tokenizer_file(out: Path, products: list[str], progress) -> FileRef | None:
    """CLIP's BPE merges into the bundle, so a device of any architecture tokenizes products named there
    (checked against the export tokenizer on the ensemble sentences of the products named here)."""
    from export.modeling.clip_tokenizer import write_bpe
    from export.modeling.text_prompts import class_sentences

    sentences = [s for name in dict.fromkeys(products) for half in class_sentences(name) for s in half]
    try:
        path = write_bpe(out, sentences)
    except AgptError as e:  # the tokenizer wheel is missing here: products named on the device get 'object' features
        progress(f"note: no CLIP tokenizer in the bundle ({e})")
        return None
    progress(f"CLIP BPE merges: {path.name} (checked on {len(sentences)} sentences)")
    return FileRef(file=path.name, sha256=sha256_file(path))


def write_manifest(root: Path, manifest: BundleManifest) -> None:
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(manifest.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)


# ---------------------------------------------------------------- CLI


def _quant_arg(text: str) -> str:
    from export.llm_export import _quant_arg as quant

    return quant(text)


def _product(text: str) -> tuple[str, str]:
    name, _, desc = text.partition("=")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"--product {text!r}: expected NAME or NAME=DESCRIPTION")
    return name.strip(), desc.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt-dir", type=Path, help="folder with imagebind_ckpt/, pandagpt_ckpt/, anomalygpt_ckpt/, vicuna_ckpt/")
    p.add_argument("--imagebind", type=Path, help="imagebind_huge.pth (overrides --ckpt-dir)")
    p.add_argument("--pandagpt", type=Path, help="PandaGPT delta pytorch_model.pt")
    p.add_argument("--anomalygpt", type=Path, help="AnomalyGPT delta pytorch_model.pt")
    p.add_argument("--vicuna", type=Path, help="Vicuna-7B v0 HF folder")
    p.add_argument("--out", type=Path, required=True, help="bundle folder, e.g. models/mvtec")
    p.add_argument(
        "--product",
        type=_product,
        action="append",
        default=[],
        metavar="NAME[=DESCRIPTION]",
        help="product whose text features are stored (repeatable); DESCRIPTION prefixes the LLM question",
    )
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="ONNX weights (decoder stays fp32)")
    p.add_argument("--no-llm", action="store_true", help="vision graphs only")
    p.add_argument("--quant", type=_quant_arg, default="Q4_K_M", help="LLM quantisation, any case (F32, F16, Q8_0, Q4_K_M)")


def run(args: argparse.Namespace) -> int:
    export_bundle(
        args.ckpt_dir,
        args.out,
        imagebind=args.imagebind,
        pandagpt=args.pandagpt,
        anomalygpt=args.anomalygpt,
        vicuna=args.vicuna,
        products=dict(args.product),
        precision=args.precision,
        llm=False if args.no_llm else None,
        quant=args.quant,
    )
    return 0
