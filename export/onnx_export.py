"""ONNX graphs of the vision side, with the I/O names of the bundle contract.

    encoder.onnx       image (B,3,224,224)             -> emb (B,E), tap0..tap3 (B,256,W) CLS dropped
    decoder.onnx       tap0..tap3, text_feats (2,E)    -> map (B,1,224,224)
    prompt.onnx        map (B,1,224,224), emb (B,E)    -> prompts (B,18,D), img_embed (B,1,D)
    text_encoder.onnx  tokens (N,77) int64             -> text_emb (N,E)

Exporter: torch.onnx.export(dynamo=True) (torch 2.13). Against the legacy TorchScript exporter it gives
the same numbers (both ~5e-6 on the tiny tower) and a graph with a third of the nodes (no Shape/Gather
chains for the dynamic batch), and it writes value_info, which the fp16 conversion relies on.

fp16: the fp32 graph is converted with onnxruntime's float16 helper (keep_io_types: inputs and outputs
stay float32), with LayerNormalization, Softmax and the L2 normalisations (ReduceL2, Clip, Div) and Resize
kept in fp32 behind Casts. decoder.onnx always stays fp32: its cosines are scaled by 100 before a
softmax, so fp16 rounding of a cosine (~5e-4) would move the map by percents, for 1% of the compute.
Weights above 1.5 GB go to one external data file '<graph>.onnx.data' beside the graph.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from runtime.pipeline.bundle import TensorSpec

OPSET = 18
EXTERNAL_DATA_BYTES = int(1.5e9)
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceSum", "ReduceMean", "Sqrt", "Pow", "Clip", "Div", "Resize"]
FP16_GRAPHS = ("encoder", "prompt", "text_encoder")  # decoder stays fp32 (see above)
BATCH = "batch"

# The exporter logs a warning per torchvision op it cannot register; torchvision is not a dependency.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@dataclass
class GraphFile:
    """What export_graph wrote: the graph, its external data files and its tensor specs."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    external: list[Path] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------- graph wrappers (explicit I/O)


class EncoderGraph(nn.Module):
    def __init__(self, vision):
        super().__init__()
        self.vision = vision

    def forward(self, image):
        emb, taps = self.vision(image)
        return (emb, *taps)


def encoder_specs(vision) -> tuple[list[TensorSpec], list[TensorSpec]]:
    n, s = vision.grid**2, vision.image_size
    ins = [TensorSpec(name="image", shape=[BATCH, 3, s, s])]
    outs = [TensorSpec(name="emb", shape=[BATCH, vision.embed])]
    outs += [TensorSpec(name=f"tap{k}", shape=[BATCH, n, vision.width]) for k in range(len(vision.tap_layers))]
    return ins, outs


def decoder_specs(vision, decoder) -> tuple[list[TensorSpec], list[TensorSpec]]:
    n, e = vision.grid**2, decoder.fc[0].out_features
    ins = [TensorSpec(name=f"tap{k}", shape=[BATCH, n, fc.in_features]) for k, fc in enumerate(decoder.fc)]
    ins.append(TensorSpec(name="text_feats", shape=[2, e]))
    return ins, [TensorSpec(name="map", shape=[BATCH, 1, 224, 224])]


def prompt_specs(learner, proj) -> tuple[list[TensorSpec], list[TensorSpec]]:
    d, n_base = proj.out_features, learner.base_prompts.shape[0]
    ins = [TensorSpec(name="map", shape=[BATCH, 1, 224, 224]), TensorSpec(name="emb", shape=[BATCH, proj.in_features])]
    outs = [TensorSpec(name="prompts", shape=[BATCH, n_base + 9, d]), TensorSpec(name="img_embed", shape=[BATCH, 1, d])]
    return ins, outs


def text_specs(text) -> tuple[list[TensorSpec], list[TensorSpec]]:
    ins = [TensorSpec(name="tokens", shape=[BATCH, text.context], dtype="int64")]
    return ins, [TensorSpec(name="text_emb", shape=[BATCH, text.embed])]


# ---------------------------------------------------------------- export


def _example(spec: TensorSpec, batch: int = 2) -> torch.Tensor:
    shape = [batch if isinstance(d, str) else d for d in spec.shape]
    if spec.dtype == "int64":
        t = torch.zeros(shape, dtype=torch.int64)
        t[..., 0], t[..., 1] = 49406, 49407  # a valid empty sentence: SOT EOT
        return t
    return torch.randn(shape)


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def external_files(path: Path) -> list[Path]:
    """External data files a saved graph refers to (read without loading the weights)."""
    m = onnx.load(str(path), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return sorted(path.parent / loc for loc in locs)


def _clean(path: Path) -> None:
    """Remove an earlier graph and its data file: onnx appends to an existing external data file."""
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, with FP32_OPS kept fp32 and graph inputs/outputs kept float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # The dynamo exporter writes value_info for every tensor, so no shape inference is needed (it
    # would serialize the model and fail above 2 GB).
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS, disable_shape_infer=True)
    return topo_sort(model)


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order nodes so each comes after its inputs' producers (the converter appends the input Casts last)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise RuntimeError(f"graph has a cycle or an undefined input near node {rest[0].name}")
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def export_graph(
    module: nn.Module, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], precision: str = "fp32", progress=print
) -> GraphFile:
    """Export `module` (called with the inputs in order) to `path`, dynamic over the axes named 'batch'."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision {precision!r}: fp32 or fp16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    module = module.eval()
    batch = torch.export.Dim(BATCH, min=1, max=4096)
    args = tuple(_example(s) for s in inputs)
    dyn = tuple({i: batch for i, d in enumerate(s.shape) if d == BATCH} or None for s in inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (pytree deprecations, axis renaming)
        program = torch.onnx.export(
            module,
            args,
            None,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=dyn,
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    _clean(path)
    nbytes = _nbytes(module)
    if precision == "fp32":
        program.save(str(path), external_data=nbytes > EXTERNAL_DATA_BYTES)
    else:
        proto = to_fp16(program.model_proto)
        del program
        big = nbytes // 2 > EXTERNAL_DATA_BYTES
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
        del proto
    onnx.checker.check_model(str(path))  # the path form reads external data and handles > 2 GB
    check_io(path, inputs, outputs)
    g = GraphFile(path, inputs, outputs, precision, external_files(path), time.perf_counter() - t0)
    progress(f"wrote {path} ({precision}, {nbytes / 1e6:.1f} MB of fp32 weights, {g.seconds:.1f} s)")
    return g


_ELEM = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT32: "int32",
}


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The tensor specs a saved graph declares (dim_param names for dynamic axes)."""
    m = onnx.load(str(path), load_external_data=False)

    def spec(v):
        tt = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        return TensorSpec(name=v.name, shape=dims, dtype=_ELEM.get(tt.elem_type, str(tt.elem_type)))

    return [spec(v) for v in m.graph.input], [spec(v) for v in m.graph.output]


def check_io(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    got_in, got_out = graph_io(path)

    def norm(specs):
        return [(s.name, [d if isinstance(d, int) else BATCH for d in s.shape], s.dtype) for s in specs]

    if norm(got_in) != norm(inputs) or norm(got_out) != norm(outputs):
        raise RuntimeError(
            f"{path}: exported I/O {norm(got_in)} -> {norm(got_out)} differs from {norm(inputs)} -> {norm(outputs)}"
        )


# ---------------------------------------------------------------- the four graphs


def export_encoder(vision, path: Path, precision: str = "fp32", progress=print) -> GraphFile:
    return export_graph(EncoderGraph(vision), path, *encoder_specs(vision), precision=precision, progress=progress)


def export_decoder(vision, decoder, path: Path, progress=print) -> GraphFile:
    from export.modeling.decoder import DecoderMap

    return export_graph(DecoderMap(decoder), path, *decoder_specs(vision, decoder), precision="fp32", progress=progress)


def export_prompt(learner, proj, path: Path, precision: str = "fp32", progress=print) -> GraphFile:
    from export.modeling.prompt_learner import PromptGraph

    return export_graph(PromptGraph(learner, proj), path, *prompt_specs(learner, proj), precision=precision, progress=progress)


def export_text(text, path: Path, precision: str = "fp32", progress=print) -> GraphFile:
    return export_graph(text, path, *text_specs(text), precision=precision, progress=progress)


def export_all(mods, out: Path, precision: str = "fp32", progress=print) -> dict[str, GraphFile]:
    """encoder, decoder, prompt (+llama_proj) and, when the text tower is loaded, text_encoder."""
    out = Path(out)
    prec = lambda name: precision if name in FP16_GRAPHS else "fp32"
    graphs = {
        "encoder": export_encoder(mods.vision, out / "encoder.onnx", prec("encoder"), progress),
        "decoder": export_decoder(mods.vision, mods.decoder, out / "decoder.onnx", progress),
        "prompt": export_prompt(mods.learner, mods.proj, out / "prompt.onnx", prec("prompt"), progress),
    }
    if mods.text is not None:
        graphs["text_encoder"] = export_text(mods.text, out / "text_encoder.onnx", prec("text_encoder"), progress)
    return graphs
