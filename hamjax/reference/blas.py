"""Optional speed-up of tblite by running it against an optimised BLAS/LAPACK.

The PyPI ``tblite`` wheel bundles the unoptimised reference BLAS/LAPACK
(``tblite.libs/libblas-*.so``), and most of a large GFN-xTB calculation is spent in the
eigensolver's dgemm/dtrsm/dsyr2k. Starting the Python process with a system OpenBLAS
preloaded (``LD_PRELOAD``) makes the dynamic linker resolve those symbols to OpenBLAS
instead. The library must be loaded before the process starts, so the preload applies to a
*child* process: :func:`reference_environment` returns the environment to start it with.

On Debian/Ubuntu the library comes from the package ``libopenblas0-pthread``
(``/usr/lib/<multiarch>/openblas-pthread/libopenblas.so.0``). Without it everything works,
only slower. Set ``HAMJAX_OPENBLAS=0`` to opt out, or ``HAMJAX_OPENBLAS=/path/libopenblas.so``
to name another library.
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


def find_openblas() -> str | None:
    """Path of a system OpenBLAS to preload, or None (absent, or disabled by HAMJAX_OPENBLAS).

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
    return None


def openblas_preloaded(environ: dict | None = None) -> bool:
    """Whether ``LD_PRELOAD`` of ``environ`` (default: this process) names an OpenBLAS."""
    environ = os.environ if environ is None else environ
    return "openblas" in environ.get("LD_PRELOAD", "").lower()


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
    if openblas_preloaded(env):
        preloaded = [p for p in env["LD_PRELOAD"].split() if "openblas" in p.lower()]
        return env, preloaded[0]
    library = find_openblas()
    if library is None:
        return env, None
    env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
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
        if path.startswith("/") and any(k in base for k in ("blas", "lapack")):
            names.add(path)
    return sorted(names)


def active_openblas() -> str | None:
    """Path of an OpenBLAS preloaded into this process (``LD_PRELOAD`` and mapped), or None."""
    if not openblas_preloaded():
        return None
    mapped = [p for p in loaded_blas_libraries() if "openblas" in os.path.basename(p).lower()]
    for path in os.environ["LD_PRELOAD"].split():
        real = os.path.realpath(path)
        if any(os.path.realpath(m) == real for m in mapped):
            return path
    return None
