"""`agpt bank rollback --bundle B --product P`: the product's previous pack back in place (offline).

A running daemon does the same with the control command `rollback` and swaps between two frames; this is
for a station that is stopped. The replaced pack goes into history too, so a rollback can be undone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.pipeline.products import PackSpec
from runtime.pipeline.store import ProductStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder")
    p.add_argument("--product", required=True, help="product name")
    p.add_argument("--list", action="store_true", help="only list the kept versions")


def run(args: argparse.Namespace) -> int:
    from runtime.pipeline.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=False)
    store = ProductStore(bundle.products_dir, PackSpec.from_bundle(bundle))
    if args.list:
        current = store.load(args.product)
        print(f"current: {current.bank_id} ({store.pack_path(args.product)})")
        for p in reversed(store.history(args.product)):
            print(f"kept:    {p.stem.split('-', 1)[-1]} ({p})")
        return 0
    restored, replaced = store.rollback(args.product)
    print(f"{args.product}: bank {replaced.bank_id} -> {restored.bank_id} (the replaced pack is kept in history)")
    return 0
