"""`agpt`: one console command, subcommands imported lazily.

A subcommand is a module with add_arguments(parser) and run(args) -> int ("module:name": that object of the
module, for a module that holds several subcommands). Export subcommands live in
export/ and import torch; they are only imported when asked for, so `agpt run` works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from runtime.errors import AgptError

COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("export", "make-tiny"): ("export.tiny", "write tiny random checkpoints in the official formats"),
    ("export", "reference"): ("export.reference", "run the PyTorch reference (the oracle) on one image"),
    ("export", "bundle"): ("export.bundle_writer", "export encoder, decoder, prompt learner (+ LLM) into a bundle"),
    ("export", "llm"): ("export.llm_export", "merge the LoRA, write and quantise the GGUF"),
    ("export", "verify"): ("export.verify", "compare a bundle with the reference on the same images"),
    ("export", "trt"): ("export.tensorrt_build", "build TensorRT engines for a bundle on this device"),
    ("export", "lite"): ("export.lite", "export the EfficientNet-Lite0 lite bundle (no LLM)"),
    ("run",): ("runtime.line.daemon", "run the inspection daemon"),
    ("demo",): ("runtime.tools.demo", "the whole line on this machine: bundle, product, daemon on a synthetic line, subscriber"),
    ("subscribe",): ("runtime.tools.subscribe", "print the results a daemon publishes"),
    ("bank", "build"): ("runtime.tools.bank", "build a product pack from normal shots"),
    ("bank", "tune"): ("runtime.tools.tune", "set a product's operating point from labelled images, with the evidence"),
    ("bank", "rollback"): ("runtime.tools.rollback", "put a product's previous pack back (products/<name>/history/)"),
    ("eval",): ("runtime.tools.evaluate", "evaluate a bundle on labelled images (MVTec layout or good/ + bad/)"),
    ("bench",): ("runtime.tools.bench", "per-stage latency and throughput, ours vs the reference"),
    ("health",): ("runtime.tools.health", "ask a running daemon for its status (exit 0 when healthy)"),
    ("proxy",): ("runtime.tools.proxy", "one address for every station's results: a ZeroMQ XSUB/XPUB forwarder"),
    ("archive", "query"): ("runtime.tools.archive:query", "rows of the traceability archive by time, product, verdict, lot"),
    ("archive", "export"): (
        "runtime.tools.archive:export",
        "an audit's CSV plus the images of a selection, into a folder or zip",
    ),
    ("view",): ("runtime.tools.view", "the operator's web page: live frames with the anomaly map, rejects, changeover"),
}


# a missing module -> the extra that installs it
EXTRAS = {m: "export" for m in ("torch", "transformers", "onnx", "gguf", "sentencepiece")} | {
    "sqlalchemy": "archive", "psycopg": "archive"}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="agpt", description="AnomalyGPT on the line: export once, inspect every frame.")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): root.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    }
    for path, (_, help_) in COMMANDS.items():
        for depth in range(1, len(path)):
            if path[:depth] not in groups:
                p = groups[path[: depth - 1]].add_parser(path[depth - 1], help=f"{path[depth - 1]} commands")
                groups[path[:depth]] = p.add_subparsers(dest=f"cmd{depth}", required=True, metavar="COMMAND")
        groups[path[:-1]].add_parser(path[-1], help=help_, description=help_)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = next((p for p in COMMANDS if tuple(argv[: len(p)]) == p), None)
    if path is None:  # no complete subcommand: the root parser prints usage, help or the error
        _parser().parse_args(argv)
        return 2
    module_name, help_ = COMMANDS[path]
    module_name, _, attr = module_name.partition(":")
    try:
        module = importlib.import_module(module_name)
        module = getattr(module, attr) if attr else module
    except ModuleNotFoundError as e:
        missing = e.name or "?"
        extra = EXTRAS.get(missing.split(".")[0])
        hint = f" (install the {extra} extra: pip install 'anomalygpt-edge[{extra}]')" if extra else ""
        print(f"agpt: error: '{' '.join(path)}' needs the module {missing}{hint}", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog="agpt " + " ".join(path), description=help_)
    module.add_arguments(sub)
    args = sub.parse_args(argv[len(path) :])
    try:
        return int(module.run(args) or 0)
    except AgptError as e:
        print(f"agpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
