"""Engine selection (runtime.pipeline.engines.select): what `backend.engine` opens, and the one-line errors
when the host lacks it. A fake `tensorrt` (and cuda-python) module, injected into sys.modules, proves the
daemon opens the bundle's engines through the TensorRT backend by device tag; a recording InferenceSession
proves the TensorRT EP options reach onnxruntime. No GPU needed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from runtime.errors import AgptError
from runtime.pipeline.bundle import MANIFEST, FileRef, load_bundle, sha256_file
from runtime.pipeline.engines import select
from runtime.pipeline.engines.config import BackendConfig
from tests._daemon_fakes import daemon_config

# ------------------------------------------------------------------ config


def test_config_fields_and_removed_keys():
    cfg = BackendConfig()
    assert cfg.engine == "onnxruntime" and cfg.llm_kv_type == "f16" and cfg.llm_gpu_layers == -1 and not cfg.llm_mmap
    assert cfg.llm_options() == dict(n_threads=None, n_gpu_layers=-1, n_ctx=512, kv_type="f16", repack=True, mmap=False)
    assert cfg.llm_options("answer")["n_ctx"] == 1024  # an answer of up to 512 tokens needs the longer context
    assert BackendConfig(llm_ctx=2048).llm_options("first_token")["n_ctx"] == 2048  # a set value wins
    assert BackendConfig(providers="auto").providers == "auto"
    for bad in ({"inter_op_threads": 2}, {"engine": "openvino"}, {"llm_kv_type": "q4"}, {"providers": "gpu"}):
        with pytest.raises(ValidationError):
            BackendConfig(**bad)


def test_as_config_takes_partial_objects():
    ns = types.SimpleNamespace(providers=["CPUExecutionProvider"], intra_op_threads=1, llm_gpu_layers=None)
    cfg = select.as_config(ns)
    assert cfg.intra_op_threads == 1 and cfg.llm_gpu_layers == -1  # None: the default


# ------------------------------------------------------------------ what the host lacks


def test_a_provider_the_host_lacks_is_an_error(lite_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(AgptError, match="has no CUDAExecutionProvider"):
        select.open_vision(load_bundle(lite_bundle), BackendConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    ve = select.open_vision(load_bundle(lite_bundle), BackendConfig(providers="auto", intra_op_threads=1))
    assert ve.engines["encoder"].providers == [p for p in ort.get_available_providers() if p in select_auto()]


def select_auto():
    from runtime.pipeline.engines.config import AUTO_PROVIDERS

    return AUTO_PROVIDERS


def test_tensorrt_without_the_module_is_one_line(lite_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(AgptError, match="TensorRT is not installed"):
        select.open_vision(load_bundle(lite_bundle), BackendConfig(engine="tensorrt"))


def test_torch_engine_errors(lite_bundle):
    b = load_bundle(lite_bundle)
    with pytest.raises(AgptError, match="torch_ckpt_dir"):
        select.open_vision(b, BackendConfig(engine="torch"))
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch absent")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(AgptError, match="no CUDA device"):
            select.open_vision(b, BackendConfig(engine="torch", torch_ckpt_dir="/nonexistent"))


def test_torch_plugin_is_found_by_name_and_a_factory_overrides_it(lite_bundle):
    from runtime.pipeline.inspector import Inspector
    from runtime.tools import torch_engine

    assert select.plugin("torch") is torch_engine.open_vision
    with pytest.raises(AgptError, match="no plugin registered"):
        select.plugin("openvino")
    seen = []

    def factory(bundle, cfg):
        seen.append((bundle.root, cfg.engine))
        return select.open_vision(bundle, cfg.model_copy(update={"engine": "onnxruntime"}))

    insp = Inspector(load_bundle(lite_bundle), BackendConfig(engine="torch", intra_op_threads=1), vision_factory=factory)
    assert seen == [(lite_bundle, "torch")] and insp.vision.has("encoder")


@pytest.mark.slow
def test_torch_plugin_opens_the_checkpoints_on_the_cpu(tiny_ckpt, tiny_bundle):
    """engine torch, device cpu: the plugin builds TorchVision from the checkpoints; same map as the ONNX path."""
    pytest.importorskip("torch")
    from runtime.pipeline.inspector import Inspector

    b = load_bundle(tiny_bundle)
    cfg = dict(intra_op_threads=1, llm_threads=1)
    tv = Inspector(b, BackendConfig(engine="torch", torch_ckpt_dir=str(tiny_ckpt), torch_device="cpu", **cfg))
    ox = Inspector(b, BackendConfig(**cfg), llm=tv.llm)
    assert type(tv.vision).__name__ == "TorchVision"
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    from runtime.pipeline.products import build_pack

    pack = build_pack(ox, "cookie", "", [])
    a, c = tv.judge(frame, pack), ox.judge(frame, pack)
    assert np.abs(a.map - c.map).max() < 1e-4 and a.verdict == c.verdict


# ------------------------------------------------------------------ a fake TensorRT


class _FakeTrt(types.ModuleType):
    """Just enough of tensorrt 10 for TrtEngine.__init__: the engine file is JSON naming its I/O tensors."""

    def __init__(self):
        super().__init__("tensorrt")
        self.__version__ = "10.3.0"
        self.opened: list[str] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class TensorIOMode:
            INPUT, OUTPUT = "in", "out"

        class Engine:
            def __init__(self, spec):
                self.io = [(t, "in") for t in spec["inputs"]] + [(t, "out") for t in spec["outputs"]]
                self.num_io_tensors = len(self.io)

            def _t(self, name):
                return next(t for t in self.io if t[0]["name"] == name)

            def get_tensor_name(self, i):
                return self.io[i][0]["name"]

            def get_tensor_shape(self, name):
                return [d if isinstance(d, int) else -1 for d in self._t(name)[0]["shape"]]

            def get_tensor_dtype(self, name):
                return self._t(name)[0]["dtype"]

            def get_tensor_mode(self, name):
                return self._t(name)[1]

            def create_execution_context(self):
                return object()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data: bytes):
                spec = json.loads(data)
                fake.opened.append(spec["tag"])
                return Engine(spec)

        self.Logger, self.Runtime, self.TensorIOMode = Logger, Runtime, TensorIOMode
        self.nptype = np.dtype


def _fake_cudart(major: int, minor: int) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaGetDeviceProperties = lambda dev: (0, types.SimpleNamespace(major=major, minor=minor))
    rt.cudaStreamCreate = lambda: (0, 1)
    rt.cudaFree = lambda ptr: (0,)
    return rt


def _inject(monkeypatch, major=8, minor=7) -> _FakeTrt:
    trt = _FakeTrt()
    rt = _fake_cudart(major, minor)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    return trt


def _with_engines(src: Path, dst: Path, tags: list[str]) -> Path:
    """A copy of a bundle whose components carry 'engines' for these device tags (JSON the fake reads)."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST).read_text())
    for name, comp in raw["components"].items():
        for tag in tags:
            f = f"engines/{tag}/{name}.engine"
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            (dst / f).write_text(json.dumps({"tag": f"{tag}/{name}", "inputs": comp["inputs"], "outputs": comp["outputs"]}))
            comp.setdefault("engines", {})[tag] = FileRef(file=f, sha256=sha256_file(dst / f)).model_dump()
    (dst / MANIFEST).write_text(json.dumps(raw))
    return dst


def test_the_daemon_opens_tensorrt_engines_by_device_tag(lite_bundle, tmp_path, monkeypatch):
    from runtime.line.daemon import Daemon
    from runtime.pipeline.engines.tensorrt import TrtEngine

    trt = _inject(monkeypatch, 8, 7)
    bundle = _with_engines(lite_bundle, tmp_path / "b", ["sm72-trt8.5", "sm87-trt10.3"])
    d = Daemon(daemon_config(bundle, backend=BackendConfig(engine="tensorrt")))
    insp = d.open_inspector()
    enc = insp.vision.engines["encoder"]
    assert isinstance(enc, TrtEngine) and enc.path == bundle / "engines/sm87-trt10.3/encoder.engine"
    assert trt.opened == ["sm87-trt10.3/encoder"] and insp.vision.backend == "tensorrt"


def test_tensorrt_without_a_cuda_device_is_one_line(lite_bundle, monkeypatch):
    _inject(monkeypatch)
    sys.modules["cuda.bindings.runtime"].cudaGetDeviceProperties = lambda dev: (100, None)  # cudaErrorNoDevice
    with pytest.raises(AgptError, match="needs a CUDA GPU"):
        select.open_vision(load_bundle(lite_bundle), BackendConfig(engine="tensorrt"))


def test_tensorrt_refuses_a_gpu_without_engines_and_altered_engines(lite_bundle, tmp_path, monkeypatch):
    _inject(monkeypatch, 9, 0)  # an sm90 card: the bundle's engines were built for an Orin
    bundle = _with_engines(lite_bundle, tmp_path / "b", ["sm87-trt10.3"])
    with pytest.raises(AgptError, match=r"no TensorRT engine of 'encoder' for this device \(sm90-trt10.3\).*agpt export trt"):
        select.open_vision(load_bundle(bundle), BackendConfig(engine="tensorrt"))
    _inject(monkeypatch, 8, 7)
    (bundle / "engines/sm87-trt10.3/encoder.engine").write_text("{}")
    with pytest.raises(AgptError, match="missing or altered"):
        select.open_vision(load_bundle(bundle), BackendConfig(engine="tensorrt"))


# ------------------------------------------------------------------ TensorRT EP options reach onnxruntime


class _Recorder:
    """Wraps a real CPU InferenceSession, recording what it was asked for, and claims the GPU providers ran."""

    calls: list = []
    claim_all = True

    def __init__(self, path, so=None, providers=None):
        import onnxruntime as ort

        type(self).calls.append({"path": path, "providers": providers, "threads": so.intra_op_num_threads})
        self._s = ort.capi.onnxruntime_inference_collection.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self._p = [p[0] if isinstance(p, tuple) else p for p in providers] if self.claim_all else ["CPUExecutionProvider"]

    def get_providers(self):
        return self._p

    def __getattr__(self, name):
        return getattr(self._s, name)


@pytest.fixture
def gpu_ort(monkeypatch):
    import onnxruntime as ort

    _Recorder.calls, _Recorder.claim_all = [], True
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", _Recorder)
    return _Recorder


def test_tensorrt_ep_options_reach_the_session(lite_bundle, tmp_path, gpu_ort):
    from runtime.line.daemon import Daemon

    bundle = tmp_path / "b"
    shutil.copytree(lite_bundle, bundle)
    backend = BackendConfig(providers="auto", intra_op_threads=1, tensorrt_ep={"fp16": False, "workspace_mb": 512})
    Daemon(daemon_config(bundle, backend=backend)).open_inspector()
    (call,) = gpu_ort.calls
    name, opts = call["providers"][0]
    assert name == "TensorrtExecutionProvider" and call["providers"][1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["trt_fp16_enable"] is False and opts["trt_max_workspace_size"] == 512 << 20
    assert opts["trt_engine_cache_enable"] is True and Path(opts["trt_engine_cache_path"]) == bundle / "trt_cache"
    assert (bundle / "trt_cache").is_dir() and call["threads"] == 1


def test_a_gpu_provider_that_fails_to_start_is_an_error(lite_bundle, tmp_path, gpu_ort):
    gpu_ort.claim_all = False  # onnxruntime fell back to the CPU (CUDA libraries missing)
    with pytest.raises(AgptError, match="could not start TensorrtExecutionProvider, CUDAExecutionProvider"):
        select.open_vision(load_bundle(lite_bundle), BackendConfig(providers="auto", tensorrt_ep={"engine_cache": False}))


# ------------------------------------------------------------------ text encoder: only when needed


def test_text_encoder_is_opened_only_for_a_product_named_on_the_device(tiny_bundle, tiny_ckpt):
    pytest.importorskip("torch")
    from export.modeling.text_prompts import text_features
    from export.vision_modules import CheckpointPaths, load_vision_modules
    from runtime.pipeline.inspector import Inspector

    b = load_bundle(tiny_bundle)
    assert b.manifest.tokenizer is not None and b.path(b.manifest.tokenizer).is_file()
    insp = Inspector(b, BackendConfig(intra_op_threads=1, llm_threads=1))
    assert "text_encoder" not in insp.vision.engines and insp.vision.has("text_encoder")
    np.testing.assert_array_equal(insp.text_features("cookie"), np.asarray(b.manifest.products["cookie"].text_feats, np.float32))
    assert "text_encoder" not in insp.vision.engines  # set up at export: no graph needed
    from runtime.pipeline.products import build_pack

    shot = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    build_pack(insp, "gear", "", [shot])
    assert "text_encoder" not in insp.vision.engines  # normal shots: the bank map, no text needed
    ours = insp.text_features("metal nut")
    assert "text_encoder" in insp.vision.engines
    mods = load_vision_modules(CheckpointPaths.resolve(tiny_ckpt), text=True)
    assert np.abs(ours - text_features(mods.text, "metal nut")).max() < 1e-5


def test_without_merges_a_device_product_gets_the_fallback(tiny_bundle, tmp_path):
    from runtime.pipeline.inspector import Inspector

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b, ignore=shutil.ignore_patterns("*.gguf"))
    raw = json.loads((b / MANIFEST).read_text())
    raw["tokenizer"], raw["llm"] = None, None
    (b / MANIFEST).write_text(json.dumps(raw))
    bundle = load_bundle(b, verify=False)
    insp = Inspector(bundle, BackendConfig(intra_op_threads=1))
    np.testing.assert_array_equal(
        insp.text_features("gear"), np.asarray(bundle.manifest.products["object"].text_feats, np.float32)
    )
    assert "text_encoder" not in insp.vision.engines
