"""Check that a Jetson image has the pieces anomalygpt-edge needs, from the right places.

    python3 deploy/jetson_check.py          # at image build time (Dockerfile.jetson runs it): no GPU needed
    python3 deploy/jetson_check.py --gpu    # on the device: docker run --runtime nvidia ... (see docs/deploy.md)

Checks: numpy 1.x (JetPack's cv2 is built against it); cv2 is JetPack's build with GStreamer
(not a pip wheel); TensorRT's Python bindings import; onnxruntime is the GPU build with the CUDA and
TensorRT providers (and no CPU wheel beside it); with --gpu, llama-cpp-python was built with CUDA offload.
Without --gpu (a `docker build` without the nvidia runtime), a module whose native libraries come from
the host (libcuda, libnvdla_*: mounted only by --runtime nvidia) is checked for presence only.
Prints one line per check and exits 1 if any failed. Standard library only, besides what it checks.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable

PIP_OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def gstreamer_enabled(build_info: str) -> bool:
    """True when cv2.getBuildInformation() reports 'GStreamer: YES' under Video I/O."""
    return re.search(r"^\s*GStreamer:\s*YES\b", build_info, flags=re.MULTILINE) is not None


def require(condition: bool, message: str) -> None:
    """Like assert, but survives python -O."""
    if not condition:
        raise RuntimeError(message)


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def load(name: str, gpu: bool):
    """Import a module; without --gpu, one that is present but whose native libraries are missing -> None."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if gpu or importlib.util.find_spec(name) is None or ".so" not in str(e):
            raise
        return None


def deferred(name: str) -> str:
    return f"{name} present ({importlib.util.find_spec(name).origin}); its native libraries need --runtime nvidia: run with --gpu on the device"


def check_numpy(gpu: bool) -> str:
    import numpy

    require(int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__}: JetPack's cv2 is built for numpy 1.x")
    return f"numpy {numpy.__version__}"


def check_cv2(gpu: bool) -> str:
    pip_wheels = [n for n in PIP_OPENCV if installed(n)]
    require(not pip_wheels, f"pip OpenCV wheels installed ({', '.join(pip_wheels)}): they shadow JetPack's cv2")
    import cv2

    require(gstreamer_enabled(cv2.getBuildInformation()), f"cv2 {cv2.__version__} at {cv2.__file__} has no GStreamer")
    return f"cv2 {cv2.__version__} with GStreamer ({cv2.__file__})"


def check_tensorrt(gpu: bool) -> str:
    tensorrt = load("tensorrt", gpu)
    if tensorrt is None:
        return deferred("tensorrt")
    return f"tensorrt {tensorrt.__version__} ({tensorrt.__file__})"


def check_onnxruntime(gpu: bool) -> str:
    require(not installed("onnxruntime"), "the CPU onnxruntime wheel is installed beside onnxruntime-gpu")
    require(installed("onnxruntime-gpu"), "onnxruntime-gpu is not installed")
    onnxruntime = load("onnxruntime", gpu)
    if onnxruntime is None:
        return deferred("onnxruntime")
    providers = onnxruntime.get_available_providers()
    missing = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p not in providers]
    require(not missing, f"onnxruntime {onnxruntime.__version__} lacks {missing} (has {providers})")
    return f"onnxruntime-gpu {onnxruntime.__version__}: {', '.join(providers)}"


def check_llama_cuda(gpu: bool) -> str:
    import llama_cpp

    require(llama_cpp.llama_supports_gpu_offload(), "llama-cpp-python was built without GPU offload")
    return f"llama-cpp-python {llama_cpp.__version__} with GPU offload"


def check_runtime(gpu: bool) -> str:
    for name in ("runtime.cli", "runtime.tools.health", "runtime.line.watchdog"):
        importlib.import_module(name)
    return "runtime package imports"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="also the checks that need the GPU (run with --runtime nvidia)")
    args = p.parse_args(argv)
    checks: list[Callable[[bool], str]] = [check_numpy, check_cv2, check_tensorrt, check_onnxruntime, check_runtime]
    if args.gpu:
        checks.append(check_llama_cuda)
    failed = 0
    for fn in checks:
        name = fn.__name__.removeprefix("check_")
        try:
            print(f"ok    {name}: {fn(args.gpu)}")
        except Exception as e:
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
