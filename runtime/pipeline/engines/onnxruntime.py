"""ONNX Runtime backend: an InferenceSession with the providers the config asks for, in that order.

Providers the installed onnxruntime does not have are dropped with a log line (a CPU build has no CUDA
or TensorRT provider), and CPUExecutionProvider always closes the list so every node has a home.
Provider entries are names or (name, options) pairs, as onnxruntime takes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import TensorSpec
from runtime.pipeline.engines.base import EngineBase

log = logging.getLogger("agpt.backends")

DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _import():
    try:
        import onnxruntime as ort
    except ImportError:
        raise AgptError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return ort


def resolve_providers(requested: list | None = None) -> list:
    """The requested providers the installed onnxruntime has, in order, CPU last."""
    ort = _import()
    available = set(ort.get_available_providers())
    keep = []
    for p in requested or DEFAULT_PROVIDERS:
        name = p[0] if isinstance(p, (tuple, list)) else p
        if name in available:
            keep.append(tuple(p) if isinstance(p, (tuple, list)) else p)
        else:
            log.info("onnxruntime: provider %s is not available in this build, dropped", name)
    if not any((p[0] if isinstance(p, tuple) else p) == "CPUExecutionProvider" for p in keep):
        keep.append("CPUExecutionProvider")
    return keep


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else str(d) for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


class OrtEngine(EngineBase):
    def __init__(self, path: Path, providers: list | None = None, threads: int | None = None):
        ort = _import()
        self.path = Path(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        self.providers = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as e:  # corrupt file, unsupported op, missing external data
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
            raise AgptError(f"{self.path}: onnxruntime cannot load this graph: {first}") from None
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        log.info("%s: onnxruntime providers %s", self.path.name, self.session.get_providers())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        try:
            outs = self.session.run(self.output_names, feeds)
        except Exception as e:  # shape/dtype mismatch reported by onnxruntime
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
            raise AgptError(f"{self.path.name}: onnxruntime run failed: {first}") from None
        return dict(zip(self.output_names, outs))
