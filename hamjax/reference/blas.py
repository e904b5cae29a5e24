"""Optional speed-up of tblite by running it against an optimised BLAS/LAPACK.

The PyPI ``tblite`` wheel bundles the unoptimised reference BLAS/LAPACK
(``tblite.libs/libblas-*.so``), and most of a large GFN-xTB calculation is spent in the
eigensolver's dgemm/dtrsm/dsyr2k. Starting the Python process with a system OpenBLAS
preloaded (``LD_PRELOAD``) makes the dynamic linker resolve those symbols to OpenBLAS
instead. The library must be loaded before the process starts, so the preload applies to a
*child* process: :func:`reference_environment` returns the environment to start it with.

Two libraries are looked for, in this order: a system OpenBLAS (on Debian/Ubuntu the package
``libopenblas0-pthread``, ``/usr/lib/<multiarch>/openblas-pthread/libopenblas.so.0``), then
Intel oneMKL's ``libmkl_rt`` from the ``mkl`` wheel (a dependency of hamjax on x86-64 Linux,
installed into ``<prefix>/lib``). MKL runs with its LP64 interface (the wheel has no gfortran
interface library; tblite's real-valued BLAS/LAPACK calls are the same in both) and the GNU
OpenMP threading layer tblite itself uses. Both are several times faster than the bundled
BLAS and give the same results (``docs/reference-data.md``). Without either everything
works, only slower. Set
``HAMJAX_OPENBLAS=0`` to opt out, or ``HAMJAX_OPENBLAS=/path/lib.so`` to name a library.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = [
    "OPENBLAS_ENV",
    "find_openblas",
    "active_openblas",
    "loaded_blas_libraries",
    "openblas_preloaded",
    "reference_environment",
]

#: Environment variable: "0"/"no"/"off" disables the preload, a path names the library.
OPENBLAS_ENV = "HAMJAX_OPENBLAS"

_SEARCH = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


def _mkl_runtime() -> str | None:
    """``libmkl_rt`` of the ``mkl`` wheel in this environment, or None."""
    import sys

    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        hits = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if hits:
            return hits[-1]
    return None


def _is_mkl(path: str) -> bool:
    return "mkl" in os.path.basename(path).lower()


def find_openblas() -> str | None:
    """Path of an optimised BLAS to preload (system OpenBLAS, else the ``mkl`` wheel's
    ``libmkl_rt``), or None (absent, or disabled by HAMJAX_OPENBLAS).

    Raises:
        FileNotFoundError: ``HAMJAX_OPENBLAS`` names a path that does not exist.
    """
    choice = os.environ.get(OPENBLAS_ENV, "").strip()
    if choice.lower() in {"0", "no", "off", "false", "none"}:
        return None
    if choice and choice.lower() not in {"1", "yes", "on", "true", "auto"}:
        if not Path(choice).is_file():
            raise FileNotFoundError(f"{OPENBLAS_ENV}={choice}: no such library file")
        return choice
    for pattern in _SEARCH:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return _mkl_runtime()


def _is_optimised_blas(path: str) -> bool:
    """An OpenBLAS (anywhere in the path) or an MKL library."""
    return "openblas" in path.lower() or _is_mkl(path)


def _preloaded_blas(environ: dict) -> list[str]:
    """The OpenBLAS / MKL paths in ``LD_PRELOAD`` of ``environ``, in order."""
    return [p for p in environ.get("LD_PRELOAD", "").split() if _is_optimised_blas(p)]


def openblas_preloaded(environ: dict | None = None) -> bool:
    """Whether ``LD_PRELOAD`` of ``environ`` (default: this process) names an OpenBLAS or
    MKL."""
    return bool(_preloaded_blas(os.environ if environ is None else environ))


def reference_environment(base: dict | None = None) -> tuple[dict, str | None]:
    """Environment for a child process that runs reference calculations.

    Adds the OpenBLAS found by :func:`find_openblas` in front of ``LD_PRELOAD`` unless one
    is already preloaded.

    Args:
        base: environment to start from (default: a copy of this process's).

    Returns:
        ``(environment, library)``; ``library`` is the preloaded path or None.
    """
    env = dict(os.environ if base is None else base)
    preloaded = _preloaded_blas(env)
    if preloaded:
        return env, preloaded[0]
    library = find_openblas()
    if library is None:
        return env, None
    env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    if _is_mkl(library):
        # libmkl_rt loads its core and threading libraries from its own folder
        folder = os.path.dirname(os.path.abspath(library))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (folder, env.get("LD_LIBRARY_PATH", "")) if p
        )
        env.setdefault("MKL_INTERFACE_LAYER", "LP64")
        env.setdefault("MKL_THREADING_LAYER", "GNU")
    return env, library


def loaded_blas_libraries() -> list[str]:
    """BLAS/LAPACK shared libraries mapped into this process (Linux ``/proc/self/maps``)."""
    try:
        text = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    names = set()
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        base = os.path.basename(path)
        if path.startswith("/") and any(k in base for k in ("blas", "lapack", "mkl")):
            names.add(path)
    return sorted(names)


def active_openblas() -> str | None:
    """Path of an OpenBLAS or MKL preloaded into this process (``LD_PRELOAD`` and mapped), or
    None."""
    preloaded = _preloaded_blas(os.environ)
    if not preloaded:
        return None
    mapped = [p for p in loaded_blas_libraries() if _is_optimised_blas(p)]
    for path in preloaded:
        real = os.path.realpath(path)
        if any(os.path.realpath(m) == real for m in mapped):
            return path
    return None
