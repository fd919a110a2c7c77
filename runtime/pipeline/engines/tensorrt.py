"""TensorRT 10 backend: a serialized engine run with execute_async_v3 on one CUDA stream.

Device memory comes from cuda-python (no torch, no pycuda). Buffers are kept per tensor and grown when
a larger batch arrives. Engines are tied to a TensorRT version and a GPU; the bundle records them per
device tag (device_tag()), and `agpt export trt` (export/tensorrt_build.py) builds them on the device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import TensorSpec
from runtime.pipeline.engines.base import EngineBase

log = logging.getLogger("agpt.backends")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise AgptError(
            "TensorRT is not installed: install the tensorrt Python package of your JetPack/CUDA "
            "(e.g. pip install tensorrt) or use backend 'onnxruntime'"
        ) from None
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise AgptError("the TensorRT backend needs cuda-python for device memory: pip install cuda-python") from None
    return cudart


def _ok(result):
    """cuda-python returns (err, *values): raise on err, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise AgptError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) or None)


def device_tag() -> str:
    """'sm87-trt10.3': engines only run on the GPU architecture and TensorRT version that built them."""
    trt, cudart = import_tensorrt(), import_cudart()
    err, *rest = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise AgptError(f"engine 'tensorrt' needs a CUDA GPU and this host has none usable ({err}); use engine 'onnxruntime'")
    props = rest[0]
    return f"sm{props.major}{props.minor}-trt{'.'.join(trt.__version__.split('.')[:2])}"


class TrtEngine(EngineBase):
    def __init__(self, path: Path):
        trt = import_tensorrt()
        self.cudart = import_cudart()
        self.path = Path(path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise AgptError(
                f"{self.path}: TensorRT cannot deserialize this engine (built by another TensorRT version or for another GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self.stream = _ok(self.cudart.cudaStreamCreate())
        self.inputs, self.outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = [d if d >= 0 else "batch" for d in self.engine.get_tensor_shape(name)]
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            spec = TensorSpec(name=name, shape=shape, dtype=dtype)
            (self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(spec)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                _ok(self.cudart.cudaFree(ptr))
            ptr, cap = int(_ok(self.cudart.cudaMalloc(max(nbytes, 1)))), nbytes
            self._buffers[name] = (ptr, cap)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        cudart, ctx, stream = self.cudart, self.context, self.stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []  # keep host arrays alive until the stream is synchronised
        for spec in self.inputs:
            a = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            hosts.append(a)
            if not ctx.set_input_shape(spec.name, tuple(a.shape)):
                raise AgptError(
                    f"{self.path.name}: input {spec.name} shape {a.shape} is outside the engine's profile {spec.shape}"
                )
            ptr = self._device(spec.name, a.nbytes)
            _ok(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, h2d, stream))
            ctx.set_tensor_address(spec.name, ptr)
        outs: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            host = np.empty(tuple(ctx.get_tensor_shape(spec.name)), dtype=spec.dtype)
            ctx.set_tensor_address(spec.name, self._device(spec.name, host.nbytes))
            outs[spec.name] = host
        if not ctx.execute_async_v3(int(stream)):
            raise AgptError(f"{self.path.name}: TensorRT execution failed")
        for name, host in outs.items():
            _ok(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h, stream))
        _ok(cudart.cudaStreamSynchronize(stream))
        return outs

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
