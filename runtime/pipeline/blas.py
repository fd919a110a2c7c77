"""numpy's BLAS thread count, set at run time (the bank map's matrix products run on it).

OpenBLAS keeps one worker per core, and its idle workers spin for a while after every call: on a small host
the daemon's bank-map products (a few small matrices per frame) then keep a whole core busy doing nothing,
the core the camera threads and the other engines need (measured on 2 cores, tiny bundle: 31.5 ms of CPU per
frame with numpy's default, 16.0 ms with one BLAS thread, at the same frames/s). `backend.blas_threads`
sets it; OPENBLAS_NUM_THREADS=1 in the environment does the same before numpy is imported.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("agpt.blas")

# numpy's bundled scipy-openblas (64-bit ints), a system OpenBLAS, and their variants
_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads_64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads_64_",
    "openblas_set_num_threads",
)
_GETTERS = tuple(name.replace("_set_", "_get_") for name in _SETTERS)


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (after numpy loaded its own)."""
    import numpy  # noqa: F401  (loads numpy's BLAS, if not yet)

    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith("/") and "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:  # not Linux: leave the default
        pass
    return paths


def _call(names: tuple[str, ...], *args) -> list:
    out = []
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in names:
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int] * len(args), (ctypes.c_int if not args else None)
                out.append((f"{os.path.basename(path)}:{sym}", fn(*[int(a) for a in args])))
                break
    return out


def get_blas_threads() -> int | None:
    """numpy's OpenBLAS thread count (None: no OpenBLAS in this process)."""
    got = _call(_GETTERS)
    return got[0][1] if got else None


def set_blas_threads(n: int) -> list[str]:
    """Give numpy's OpenBLAS n threads; returns the libraries changed (empty: none found, nothing done)."""
    done = [name for name, _ in _call(_SETTERS, n)]
    if not done:
        log.debug("no OpenBLAS found in this process: blas_threads %d not applied", n)
    return done
