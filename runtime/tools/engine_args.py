"""`--engine` and its companions, shared by `agpt bench`, `agpt eval` and `agpt export verify`: the same words
as the config's `backend:` block, turned into a BackendConfig (runtime.pipeline.engines.select opens it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.pipeline.engines.config import ENGINES, BackendConfig


def add_engine_arguments(p: argparse.ArgumentParser, providers: str = "CPUExecutionProvider") -> None:
    g = p.add_argument_group("engine (as the config's backend: block)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="onnxruntime",
        help="vision engine: onnxruntime (ONNX graphs, --providers), tensorrt (engines 'agpt export trt' built on this "
        "device), torch (original checkpoints on CUDA, --torch-ckpt-dir)",
    )
    g.add_argument(
        "--providers",
        default=providers,
        help="onnxruntime providers, comma separated, or 'auto' (TensorRT EP, CUDA, CPU: those present)",
    )
    g.add_argument("--torch-ckpt-dir", type=Path, default=None, help="--engine torch: the checkpoint folder")
    g.add_argument("--torch-device", default="cuda", help="--engine torch: torch device (default cuda)")


def providers_arg(text: str) -> list[str] | str:
    text = text.strip()
    return "auto" if text == "auto" else [s.strip() for s in text.split(",") if s.strip()]


def backend_from_args(args: argparse.Namespace, **fields) -> BackendConfig:
    """A BackendConfig from the engine arguments; `fields` (threads ...) set where not None."""
    cfg = dict(
        engine=args.engine,
        providers=providers_arg(args.providers),
        torch_ckpt_dir=str(args.torch_ckpt_dir) if args.torch_ckpt_dir else None,
        torch_device=args.torch_device,
    )
    cfg.update({k: v for k, v in fields.items() if v is not None})
    return BackendConfig(**cfg)
