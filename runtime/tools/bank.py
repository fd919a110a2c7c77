"""`agpt bank build --bundle B --product NAME --description TEXT IMAGES... [--golden-good IMG...] [--golden-bad IMG...]`:
a product pack, offline.

Golden images (known parts with their expected verdict) are judged by the daemon at start and after every
changeover: give them one by one (--golden-good / --golden-bad) or as a folder with good/ and bad/
sub-folders (--golden DIR). Put the shot images before the --golden-* options (or end those with --).
Replacing a pack keeps the old one under products/<name>/history/ (`agpt bank rollback`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from runtime.errors import AgptError
from runtime.pipeline.preprocess import list_images
from runtime.pipeline.products import GoldenImage, PackSpec, build_pack, check_product_name
from runtime.pipeline.store import ProductStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder")
    p.add_argument("--product", required=True, help="product name ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
    p.add_argument("--description", default="", help="product description put before the question")
    p.add_argument("--replace", action="store_true", help="overwrite an existing pack")
    p.add_argument("--providers", default="CPUExecutionProvider", help="onnxruntime providers, comma separated")
    p.add_argument("images", nargs="+", type=Path, help="normal shot images, or folders of them")
    p.add_argument("--golden-good", nargs="+", type=Path, default=[], metavar="IMG", help="golden parts expected good")
    p.add_argument("--golden-bad", nargs="+", type=Path, default=[], metavar="IMG", help="golden parts expected defective")
    p.add_argument("--golden", type=Path, default=None, metavar="DIR", help="golden images in DIR/good and DIR/bad")


def golden_images(good: Sequence[Path], bad: Sequence[Path], folder: Path | None = None) -> list[GoldenImage]:
    """The golden images of the command line (and of a good/ + bad/ folder), read and checked now."""
    good, bad = _expand(good), _expand(bad)
    if folder is not None:
        if not (folder / "good").is_dir() and not (folder / "bad").is_dir():
            raise AgptError(f"{folder}: a golden folder holds good/ and bad/ sub-folders")
        for sub, out in (("good", good), ("bad", bad)):
            if (folder / sub).is_dir():
                out += list_images(folder / sub)
    return [GoldenImage.from_file(p, False) for p in good] + [GoldenImage.from_file(p, True) for p in bad]


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += list_images(p, required=True)
        else:
            out.append(p)
    return out


def _open_inspector(bundle: Path, providers: list[str]):
    from runtime.pipeline.engines.config import BackendConfig
    from runtime.pipeline.inspector import Inspector

    return Inspector.from_config(bundle, BackendConfig(providers=providers), "first_token")


def run(args: argparse.Namespace) -> int:
    from runtime.pipeline.bundle import load_bundle

    check_product_name(args.product)
    shots = _expand(args.images)
    golden = golden_images(args.golden_good, args.golden_bad, args.golden)
    bundle = load_bundle(args.bundle, verify=False)
    store = ProductStore(bundle.products_dir, PackSpec.from_bundle(bundle))
    if store.pack_path(args.product).exists() and not args.replace:
        raise AgptError(f"{store.pack_path(args.product)}: exists; pass --replace to overwrite it")
    print(f"loading {args.bundle} ...", flush=True)
    insp = _open_inspector(args.bundle, [s.strip() for s in args.providers.split(",") if s.strip()])
    t0 = time.perf_counter()
    print(f"encoding {len(shots)} shot(s) ...", flush=True)
    pack = build_pack(insp, args.product, args.description, shots, golden=golden)
    path = store.save(pack, replace=args.replace)
    ms = (time.perf_counter() - t0) * 1e3
    sizes = ", ".join(f"{b.shape[0]}x{b.shape[1]}" for b in pack.bank) or "no bank"
    gold = f", golden {sum(not g.expected for g in golden)} good / {sum(g.expected for g in golden)} bad" if golden else ""
    print(
        f"wrote {path}: product {pack.name}, bank_id {pack.bank_id}, {pack.n_shots} shot(s), layers {sizes}{gold} ({ms:.0f} ms)"
    )
    return 0
