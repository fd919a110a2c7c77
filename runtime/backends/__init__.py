"""Graph runners: one small interface over ONNX Runtime and TensorRT, numpy in and out.

    engine = open_engine("models/x/encoder.onnx", backend="onnxruntime", providers=[...])
    outs = engine.run({"image": x})          # {"emb": ..., "tap0": ...}

Backends are imported lazily, so a device with only one of them installed never imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..bundle import TensorSpec
from ..errors import AgptError

BACKENDS = ("onnxruntime", "tensorrt")


class Engine(Protocol):
    path: Path
    inputs: list[TensorSpec]  # as the graph/engine declares them; dynamic axes as strings
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class EngineBase:
    """Shared bits: names from the specs."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        missing = set(self.input_names) - feeds.keys()
        extra = feeds.keys() - set(self.input_names)
        if missing or extra:
            raise AgptError(f"{self.path.name}: feeds {sorted(feeds)} do not match the graph inputs {self.input_names}")


def open_engine(path: str | Path, backend: str = "onnxruntime", providers: list | None = None, threads: int | None = None,
                **options) -> Engine:
    """Open a graph file: an .onnx for 'onnxruntime', a serialized engine (.engine/.plan) for 'tensorrt'."""
    path = Path(path)
    if not path.is_file():
        raise AgptError(f"{path}: no such graph file")
    if backend == "onnxruntime":
        from .onnxruntime import OrtEngine

        return OrtEngine(path, providers=providers, threads=threads, **options)
    if backend == "tensorrt":
        from .tensorrt import TrtEngine

        return TrtEngine(path, **options)
    raise AgptError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
