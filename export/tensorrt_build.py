"""`agpt export trt BUNDLE`: TensorRT engines from a bundle's ONNX graphs, built ON the target device.

Engines are specific to the GPU architecture and the TensorRT version, so they are built where they
run (a Jetson builds its own) and recorded in bundle.json under Component.engines[device_tag()].

Precision: an fp32 ONNX graph is built with the FP16 flag and LayerNorm/Softmax/Reduce layers pinned to
fp32 (PREFER_PRECISION_CONSTRAINTS); an fp16 ONNX graph (already carrying its fp32 islands as Casts) is
built strongly typed, so TensorRT keeps exactly the ONNX types. The text encoder is not built: text
features are computed at export. One optimisation profile: batch 1..max_batch, tuned for opt_batch.
A timing cache file (default BUNDLE/trt/timing.cache) makes rebuilds of the same shapes fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.errors import AgptError
from runtime.pipeline.bundle import FileRef, load_bundle, sha256_file
from runtime.pipeline.engines.tensorrt import device_tag, import_tensorrt

ENGINE_GRAPHS = ("encoder", "decoder", "prompt")


def _pin_fp32(trt, network) -> int:
    """Normalisations and softmax stay fp32 inside an FP16 build (the ONNX fp16 converter keeps the same set)."""
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            n += 1
    return n


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    fp16: bool = True,
    strongly_typed: bool = False,
    max_batch: int = 8,
    opt_batch: int = 1,
    workspace_gb: float = 4.0,
    timing_cache: Path | None = None,
    progress=print,
) -> Path:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data next to it is found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AgptError(f"{onnx_path}: TensorRT cannot parse this graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if not fp16:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 rounds inputs to 10 mantissa bits, like fp16: off for an fp32 build
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32(trt, network)
        progress(f"{onnx_path.name}: FP16 build, {pinned} normalisation/softmax/reduce layers pinned to fp32")
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        at = lambda b, dims=dims: tuple(b if d < 0 else d for d in dims)
        profile.set_shape(t.name, at(1), at(min(opt_batch, max_batch)), at(max_batch))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AgptError(f"{onnx_path}: TensorRT build failed (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(cache.serialize()))
    progress(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s)")
    return engine_path


def build_bundle_engines(
    bundle_dir: str | Path,
    graphs=ENGINE_GRAPHS,
    max_batch: int = 8,
    opt_batch: int = 1,
    workspace_gb: float = 4.0,
    fp16: bool = True,
    progress=print,
) -> dict[str, FileRef]:
    """Build engines for the bundle's graphs on this device and record them in bundle.json."""
    from export.bundle_writer import write_manifest

    bundle = load_bundle(bundle_dir, verify=True)
    tag = device_tag()
    root = bundle.root
    cache = root / "trt" / "timing.cache"
    done: dict[str, FileRef] = {}
    manifest = bundle.manifest.model_copy(deep=True)
    for name in graphs:
        if name not in manifest.components:
            continue
        comp = manifest.components[name]
        rel = Path("trt") / tag / f"{name}.engine"
        # the decoder stays fp32 as in ONNX: its cosines are scaled by 100 before a softmax
        build_engine(
            bundle.path(comp),
            root / rel,
            fp16=fp16 and name != "decoder",
            strongly_typed=comp.precision == "fp16",
            max_batch=max_batch,
            opt_batch=opt_batch,
            workspace_gb=workspace_gb,
            timing_cache=cache,
            progress=progress,
        )
        comp.engines[tag] = done[name] = FileRef(file=str(rel), sha256=sha256_file(root / rel))
    write_manifest(root, manifest)
    progress(f"recorded {len(done)} engines for {tag} in {root / 'bundle.json'}")
    return done


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (models/NAME)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--opt-batch", type=int, default=1, help="batch size the kernels are tuned for")
    p.add_argument("--workspace-gb", type=float, default=4.0)
    p.add_argument("--fp32", action="store_true", help="no FP16 (fp32 graphs only)")


def run(args: argparse.Namespace) -> int:
    build_bundle_engines(
        args.bundle, max_batch=args.max_batch, opt_batch=args.opt_batch, workspace_gb=args.workspace_gb, fp16=not args.fp32
    )
    return 0
