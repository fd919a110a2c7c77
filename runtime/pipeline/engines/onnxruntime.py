"""ONNX Runtime backend: an InferenceSession with the providers the config asks for, in that order.

A provider asked for by name that the installed onnxruntime does not have is an error (a CPU build has no
CUDA or TensorRT provider): a line configured for the GPU must not run on the CPU without anyone knowing.
'auto' asks for exactly what this build has of TensorRT EP, CUDA, CPU. CPUExecutionProvider always closes
the list so every node has a home. Provider entries are names or (name, options) pairs, as onnxruntime
takes them (runtime.pipeline.engines.select attaches the TensorRT EP options).
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


def _name(p) -> str:
    return p[0] if isinstance(p, (tuple, list)) else p


def resolve_providers(requested: list | str | None = None) -> list:
    """The requested providers, in order, CPU last; each must be in the installed onnxruntime.
    None or 'auto': those of DEFAULT_PROVIDERS this build has."""
    ort = _import()
    available = list(ort.get_available_providers())
    if requested is None or requested == "auto":
        return [p for p in DEFAULT_PROVIDERS if p in available] or ["CPUExecutionProvider"]
    missing = [_name(p) for p in requested if _name(p) not in available]
    if missing:
        raise AgptError(
            f"onnxruntime {ort.__version__} on this host has no {', '.join(missing)} (it has {', '.join(available)}): "
            "install the onnxruntime build for this device (onnxruntime-gpu, the Jetson wheel) or set backend.providers "
            "to what it has ('auto' picks exactly those)"
        )
    keep = [tuple(p) if isinstance(p, (tuple, list)) else p for p in requested]
    if not any(_name(p) == "CPUExecutionProvider" for p in keep):
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
        # onnxruntime falls back to the CPU with only a warning when a GPU provider fails to initialise
        # (CUDA libraries missing): that is a start-up error here, not a slow line
        lost = [_name(p) for p in self.providers if _name(p) not in self.session.get_providers()]
        if lost:
            raise AgptError(
                f"{self.path.name}: onnxruntime could not start {', '.join(lost)} on this host (CUDA / TensorRT libraries?); "
                f"it would run on {', '.join(self.session.get_providers())}"
            )
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
