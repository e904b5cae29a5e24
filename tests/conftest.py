"""Test-wide settings: float64 is enabled here (an entry point), never on import.

Compiled XLA executables are cached on disk (``.pytest_cache/jax``, or ``HAMJAX_JAX_CACHE``)
so that test workers and later runs reuse the shapes another test already compiled; most of
the suite's time is compilation.
"""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
_CACHE = os.environ.get(
    "HAMJAX_JAX_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real data files made by other programs (``cp2k/``: CP2K 2023.1 runs, see its README)."""
    return DATA


@pytest.fixture(scope="session")
def experiment():
    """Loader of a script in ``experiments/`` as a module: ``experiment("molecules")``."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "experiments"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"experiments_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
