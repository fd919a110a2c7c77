"""How the engines run: execution providers and thread counts, one typed block (`backend:` in the config).

The pipeline owns it (the inspector opens its engines from it); the line's config embeds it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="onnxruntime execution providers in order of preference, e.g. [TensorrtExecutionProvider, "
        "CUDAExecutionProvider, CPUExecutionProvider]",
    )
    intra_op_threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads (None: its default)")
    llm_threads: int | None = Field(None, ge=1, description="llama.cpp threads (None: its default)")
    llm_gpu_layers: int = Field(0, ge=-1, description="llama.cpp layers offloaded to the GPU (-1: all)")
    blas_threads: int | None = Field(
        None, ge=1,
        description="numpy's OpenBLAS threads (the normal-shot bank map's matrix products); None: its default, one per "
        "core. Its idle threads spin: on a small host 1 keeps them from taking a core the cameras and engines need",
    )  # fmt: skip
