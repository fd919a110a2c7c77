"""The one place that chooses and opens the inspector's vision engines (`backend.engine`).

  onnxruntime  the bundle's ONNX graphs; providers from the config (a list, each of which this host's
               onnxruntime must have, or 'auto'); the TensorRT EP gets the config's fp16 / engine cache
               (a folder inside the bundle) / workspace options
  tensorrt     the engines `agpt export trt` built on this device, found by device tag and checked by sha256
               (runtime.pipeline.vision.VisionEngines); the text encoder, which has no engine, runs in onnxruntime
  torch        a plugin (entry point group 'agpt.engines', name 'torch'; built in: runtime.tools.torch_engine,
               which imports export.torch_backend when called): the original checkpoints in fp16 on CUDA.
               The pipeline never imports export: the plugin is found by name, or passed in as `factory`

Whatever the host lacks (no tensorrt module, no engine for this GPU, no CUDA, a provider missing) is one
AgptError at start; nothing silently runs on the CPU instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.errors import AgptError
from runtime.pipeline.bundle import Bundle
from runtime.pipeline.engines.config import ENGINES, BackendConfig

PLUGIN_GROUP = "agpt.engines"
BUILTIN_PLUGINS = {"torch": "runtime.tools.torch_engine:open_vision"}  # when the entry point is not installed
VisionFactory = Callable[[Bundle, BackendConfig], Any]  # -> an object with VisionEngines' interface


def as_config(backend: Any) -> BackendConfig:
    """A BackendConfig from None, a BackendConfig, or any object with some of its attributes (None: default)."""
    if backend is None:
        return BackendConfig()
    if isinstance(backend, BackendConfig):
        return backend
    fields = {k: getattr(backend, k) for k in BackendConfig.model_fields if getattr(backend, k, None) is not None}
    return BackendConfig(**fields)


def ort_providers(cfg: BackendConfig, bundle_root: Path) -> list:
    """The onnxruntime provider list for this config: checked against the host, TensorRT EP options attached."""
    from runtime.pipeline.engines.onnxruntime import resolve_providers

    out = []
    for p in resolve_providers(cfg.providers):
        if p == "TensorrtExecutionProvider":
            o = cfg.tensorrt_ep
            cache = Path(o.cache_dir)
            cache = cache if cache.is_absolute() else Path(bundle_root) / cache
            if o.engine_cache:
                cache.mkdir(parents=True, exist_ok=True)
            p = (
                p,
                {
                    "trt_fp16_enable": o.fp16,
                    "trt_engine_cache_enable": o.engine_cache,
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": o.engine_cache,
                    "trt_timing_cache_path": str(cache),
                    "trt_max_workspace_size": o.workspace_mb << 20,
                },
            )
        out.append(p)
    return out


def plugin(engine: str) -> VisionFactory:
    """The vision factory registered for `engine` (entry point first, then the built-in table)."""
    target = None
    try:
        from importlib.metadata import entry_points

        target = next((ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name == engine), None)
    except Exception:  # broken metadata: the built-in table still works
        target = None
    target = target or BUILTIN_PLUGINS.get(engine)
    if target is None:
        raise AgptError(f"engine {engine!r}: no plugin registered (entry point group {PLUGIN_GROUP!r})")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise AgptError(f"engine {engine!r}: its plugin {target} cannot be imported ({e})") from None


def open_vision(
    bundle: Bundle,
    backend: Any = None,
    factory: VisionFactory | None = None,
    engine_tag: str | None = None,
    graphs: tuple[str, ...] | None = None,
):
    """The vision engines the config asks for. factory: used for engine 'torch' instead of the plugin lookup."""
    from runtime.pipeline.vision import GRAPHS, VisionEngines

    cfg = as_config(backend)
    if cfg.engine not in ENGINES:
        raise AgptError(f"engine {cfg.engine!r}: one of {', '.join(ENGINES)}")
    if cfg.engine == "torch":
        return (factory or plugin("torch"))(bundle, cfg)
    providers = ort_providers(cfg, bundle.root)
    return VisionEngines(
        bundle,
        backend=cfg.engine,
        providers=providers,
        threads=cfg.intra_op_threads,
        graphs=graphs or GRAPHS,
        engine_tag=engine_tag,
    )


def describe(vision: Any) -> str:
    """One line for the start log: which engine runs which graph."""
    engines = getattr(vision, "engines", None)
    if not engines:
        return type(vision).__name__
    parts = []
    for name, e in engines.items():
        how = getattr(e, "providers", None)
        kind = type(e).__name__.replace("Engine", "").lower()
        parts.append(f"{name}={kind}" + (f"[{','.join(p[0] if isinstance(p, tuple) else p for p in how)}]" if how else ""))
    return " ".join(parts)
