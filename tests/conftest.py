"""Test-wide settings: float64 is enabled here (an entry point), never on import."""

from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real data files made by other programs (``cp2k/``: CP2K 2023.1 runs, see its README)."""
    return DATA
