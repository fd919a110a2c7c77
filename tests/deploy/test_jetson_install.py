"""Installability on the Jetson (aarch64, Python 3.10, JetPack 6): every runtime dependency either has a
cp310 aarch64 wheel on PyPI at the pinned version, or Dockerfile.jetson states where it comes from
(llama-cpp-python built from source with CUDA, onnxruntime-gpu from the Jetson AI Lab index, OpenCV and
TensorRT from JetPack). A release that bumps a pin past the last aarch64 wheel fails here, not on a device.

The download test needs PyPI (network) and is slow: `pytest -m slow tests/deploy`; it skips when PyPI is
unreachable. The statement checks run everywhere.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.jetson"
REQUIREMENTS = ROOT / "deploy" / "requirements-jetson.txt"
# JetPack 6 is Ubuntu 22.04 (glibc 2.35): any manylinux tag up to 2_35 installs there
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_31_aarch64", "manylinux_2_35_aarch64")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _pins() -> list[str]:
    return [ln.split("#")[0].strip() for ln in REQUIREMENTS.read_text().splitlines() if ln.split("#")[0].strip()]


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert m, f"Dockerfile.jetson has no ARG {name}"
    return m.group(1)


def _pyproject_pin(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dep = next(d for d in deps if d.lower().startswith(name))
    return dep.split("==")[1]


def test_llama_cpp_python_is_built_from_source_with_cuda():
    text = DOCKERFILE.read_text()
    assert "--no-binary llama-cpp-python" in text and "-DGGML_CUDA=on" in text
    assert '"llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"' in text
    assert _arg("LLAMA_CPP_PYTHON_VERSION") == _pyproject_pin("llama-cpp-python")


def test_the_tensorrt_backend_gets_cuda_python():
    """runtime/pipeline/engines/tensorrt.py needs cuda-python for device memory: the image must install it."""
    text = DOCKERFILE.read_text()
    assert '"cuda-python==${CUDA_PYTHON_VERSION}"' in text and _arg("CUDA_PYTHON_VERSION").startswith("12.6")


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("requirement", [*_pins(), f"cuda-python=={_arg('CUDA_PYTHON_VERSION')}"])
def test_pinned_dependency_has_an_aarch64_cp310_wheel(requirement, tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from here")
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", "3.10"]
    cmd += ["--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "--dest", str(tmp_path), requirement]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{requirement}: no cp310 aarch64 wheel on PyPI:\n{r.stdout[-800:]}\n{r.stderr[-800:]}"
    wheels = list(tmp_path.glob("*.whl"))
    assert wheels and all("aarch64" in w.name or "none-any" in w.name for w in wheels), [w.name for w in wheels]
