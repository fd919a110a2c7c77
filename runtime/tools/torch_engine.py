"""The 'torch' engine plugin (entry point agpt.engines:torch): the vision modules from the original checkpoints,
fp16 on CUDA with CUDA graphs (export.torch_backend.TorchVision), for GPU hosts without TensorRT.

A tools module, so the pipeline and the line never import export: runtime.pipeline.engines.select finds
this function by name, and torch / export are imported only when it is called.
"""

from __future__ import annotations

from runtime.errors import AgptError


def open_vision(bundle, cfg):
    if not cfg.torch_ckpt_dir:
        raise AgptError(
            "engine 'torch' runs the original checkpoints (a bundle's ONNX graphs do not run in torch): "
            "set backend.torch_ckpt_dir to the folder with imagebind_ckpt/, pandagpt_ckpt/, anomalygpt_ckpt/"
        )
    try:
        from export.torch_backend import TorchVision, cuda_available
    except ImportError as e:
        raise AgptError(f"engine 'torch' needs the export extra (pip install 'anomalygpt-edge[export]'): {e}") from None
    device = cfg.torch_device
    if device.startswith("cuda") and not cuda_available():
        raise AgptError(
            "engine 'torch': torch sees no CUDA device on this host (torch.cuda.is_available() is False); "
            "use engine 'onnxruntime' for the CPU"
        )
    dtype = "float16" if device.startswith("cuda") else "float32"
    return TorchVision.from_checkpoints(cfg.torch_ckpt_dir, device=device, dtype=dtype, cuda_graphs=device.startswith("cuda"))
