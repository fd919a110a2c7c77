"""The vision-side graphs of a bundle, run through one backend: numpy in, numpy out.

    ve = VisionEngines(bundle, backend="onnxruntime", providers=[...], threads=2)
    emb, taps = ve.encode(x)                  # x (B,3,224,224) float32, preprocessed
    m = ve.decoder_map(taps, text_feats)       # (B,224,224), unsupervised map (few-shot maps: runtime.pipeline.maps)
    P, E_img = ve.prompts(m, emb)              # (B,18,D), (B,1,D): the LLM's image rows
    feats = ve.text_features(tokens)           # (N,E) L2-normalised sentence embeddings

Every feed is checked against bundle.json's tensor specs (dtype, rank, fixed sizes, one batch size),
and every graph's declared inputs and outputs against the manifest when it is opened, so a graph
swapped in from another tower or model fails at start with the file's name, not with a shape error
deep inside the runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import AgptError
from runtime.pipeline.bundle import Bundle, Component, TensorSpec, sha256_file
from runtime.pipeline.engines import Engine, open_engine

GRAPHS = ("encoder", "decoder", "prompt", "text_encoder")
LAZY = ("text_encoder",)


def _dims(specs: list[TensorSpec]) -> list[tuple[str, list, str]]:
    """Comparable form: dynamic axes (any name) become '?'."""
    return [(s.name, [d if isinstance(d, int) else "?" for d in s.shape], s.dtype) for s in specs]


class VisionEngines:
    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnxruntime",
        providers: list | None = None,
        threads: int | None = None,
        graphs: tuple[str, ...] = GRAPHS,
        engine_tag: str | None = None,
        lazy: tuple[str, ...] = LAZY,
    ):
        """lazy: graphs opened on first use, not at start (the text encoder: ~1.6 GB at the real shapes, and only
        a product named on the device without text features needs it)."""
        self.bundle, self.backend = bundle, backend
        self._open_args = dict(providers=providers, threads=threads)
        self._tag = engine_tag
        self.engines: dict[str, Engine] = {}
        self.components: dict[str, Component] = {}
        self._lazy = {n for n in graphs if n in lazy and bundle.has(n)}
        for name in graphs:
            if bundle.has(name) and name not in self._lazy:
                self._open(name, backend)

    def _open(self, name: str, backend: str) -> Engine:
        comp = self.bundle.manifest.components[name]
        path = self._graph_path(name, comp, self._tag, backend)
        engine = open_engine(path, backend=backend, **self._open_args)
        self._check_graph(name, comp, engine, path)
        self.engines[name], self.components[name] = engine, comp
        return engine

    # ------------------------------------------------------------ opening

    def _graph_path(self, name: str, comp: Component, tag: str | None, backend: str) -> Path:
        if backend != "tensorrt":
            return self.bundle.path(comp)
        if tag is None:
            from runtime.pipeline.engines.tensorrt import device_tag

            tag = self._tag = device_tag()
        if tag not in comp.engines:
            have = ", ".join(comp.engines) or "none"
            raise AgptError(
                f"{self.bundle.root}: no TensorRT engine of '{name}' for this device ({tag}); bundle has: {have}. "
                f"Build them on the device with 'agpt export trt {self.bundle.root}'"
            )
        ref = comp.engines[tag]
        path = self.bundle.path(ref)
        # engines are checked here, not in load_bundle: a bundle carries engines of devices it is not on
        if not path.is_file() or sha256_file(path) != ref.sha256:
            raise AgptError(
                f"{path}: TensorRT engine missing or altered (sha256 differs from bundle.json); rebuild with 'agpt export trt'"
            )
        return path

    @staticmethod
    def _check_graph(name: str, comp: Component, engine: Engine, path: Path) -> None:
        want_in, want_out = _dims(comp.inputs), _dims(comp.outputs)
        got_in, got_out = _dims(engine.inputs), _dims(engine.outputs)
        # A TensorRT engine may declare names in another order; the ONNX graph must match exactly.
        if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
            raise AgptError(
                f"{path}: graph I/O {got_in} -> {got_out} does not match bundle.json's '{name}' component "
                f"{want_in} -> {want_out}: a graph from another tower or model?"
            )

    def has(self, name: str) -> bool:
        """The bundle has this graph here (opened, or opened on first use)."""
        return name in self.engines or name in self._lazy

    def _require(self, name: str) -> Engine:
        if name not in self.engines and name in self._lazy:
            # `agpt export trt` builds no text-encoder engine: a lazy graph without one runs in onnxruntime
            comp = self.components.get(name) or self.bundle.manifest.components[name]
            backend = self.backend if self.backend != "tensorrt" or (self._tag and self._tag in comp.engines) else "onnxruntime"
            self._lazy.discard(name)
            self._open(name, backend)
        if name not in self.engines:
            raise AgptError(f"{self.bundle.root}: bundle has no {name} graph")
        return self.engines[name]

    # ------------------------------------------------------------ feeds

    def _feeds(self, name: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Check arrays against the component's input specs (same order) and name them."""
        specs = self.components[name].inputs
        if len(arrays) != len(specs):
            raise AgptError(
                f"{name}: {len(arrays)} inputs given, the graph takes {len(specs)} ({', '.join(s.name for s in specs)})"
            )
        batch = None
        feeds = {}
        for a, s in zip(arrays, specs):
            want = "(" + ",".join(str(d) if isinstance(d, int) else "B" for d in s.shape) + ")"
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(s.dtype) or a.ndim != len(s.shape):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise AgptError(f"{name} input '{s.name}': expected {s.dtype} {want}, got {got}")
            for d, n in zip(s.shape, a.shape):
                if isinstance(d, int) and d != n:
                    raise AgptError(f"{name} input '{s.name}': expected {s.dtype} {want}, got shape {a.shape}")
                if isinstance(d, str):
                    if batch is not None and n != batch:
                        raise AgptError(f"{name} input '{s.name}': batch {n} differs from the other inputs' {batch}")
                    batch = n
            if batch == 0:
                raise AgptError(f"{name} input '{s.name}': empty batch")
            feeds[s.name] = np.ascontiguousarray(a)
        return feeds

    # ------------------------------------------------------------ the four calls

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.bundle.manifest.encoder.taps]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """x (B,3,224,224) float32 -> emb (B,E) or None (lite encoders), taps [(B,N_k,W_k)]."""
        out = self._require("encoder").run(self._feeds("encoder", [x]))
        return out.get("emb"), [out[n] for n in self.tap_names]

    def decoder_map(self, taps: list[np.ndarray], text_feats: np.ndarray) -> np.ndarray:
        """Taps and text_feats (2,E) [normal, abnormal] -> M_dec (B,224,224) in (0,1)."""
        out = self._require("decoder").run(self._feeds("decoder", [*taps, np.asarray(text_feats, np.float32)]))
        return out["map"][:, 0]

    def prompts(self, m: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map (B,224,224) or (B,1,224,224) and emb (B,E) -> P (B,18,D), E_img (B,1,D)."""
        prompt = self._require("prompt")
        if isinstance(m, np.ndarray) and m.ndim == 3:
            m = m[:, None]
        out = prompt.run(self._feeds("prompt", [m, emb]))
        return out["prompts"], out["img_embed"]

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (N,77) int64 (CLIP BPE) -> (N,E) L2-normalised sentence embeddings."""
        return self._require("text_encoder").run(self._feeds("text_encoder", [tokens]))["text_emb"]
