"""The line device has no torch: importing every runtime module must not pull it in."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import runtime


def test_runtime_never_imports_torch():
    names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    try: importlib.import_module(n)\n"
        "    except ImportError as e:\n"
        "        if e.name in ('tensorrt', 'cuda', 'pycuda'): continue\n"
        "        raise\n"
        "bad = [m for m in ('torch', 'transformers', 'sentencepiece') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(names) >= 5
