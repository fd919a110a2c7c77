"""Graph runners: one small interface over ONNX Runtime and TensorRT, numpy in and out.

    engine = open_engine("models/x/encoder.onnx", backend="onnxruntime", providers=[...])
    outs = engine.run({"image": x})          # {"emb": ..., "tap0": ...}

Backends are imported lazily, so a device with only one of them installed never imports the other.
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import AgptError
from runtime.pipeline.engines.base import Engine

BACKENDS = ("onnxruntime", "tensorrt")


def open_engine(
    path: str | Path, backend: str = "onnxruntime", providers: list | None = None, threads: int | None = None, **options
) -> Engine:
    """Open a graph file: an .onnx for 'onnxruntime', a serialized engine (.engine/.plan) for 'tensorrt'."""
    path = Path(path)
    if not path.is_file():
        raise AgptError(f"{path}: no such graph file")
    if backend == "onnxruntime":
        from runtime.pipeline.engines.onnxruntime import OrtEngine

        return OrtEngine(path, providers=providers, threads=threads, **options)
    if backend == "tensorrt":
        from runtime.pipeline.engines.tensorrt import TrtEngine

        return TrtEngine(path, **options)
    raise AgptError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
