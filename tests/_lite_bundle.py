"""One lite bundle per test process, shared by test_lite.py and test_evaluate.py (exporting takes seconds)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_BUNDLE: Path | None = None


def lite_bundle() -> Path:
    global _BUNDLE
    if _BUNDLE is None:
        import torch

        from export.lite import export_lite

        torch.set_num_threads(2)
        out = Path(tempfile.mkdtemp(prefix="agpt-lite-")) / "lite"
        atexit.register(shutil.rmtree, out.parent, ignore_errors=True)  # ~20 MB a run: leave no litter
        _BUNDLE = export_lite(out, progress=lambda *_: None)
    return _BUNDLE
