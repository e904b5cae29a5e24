"""Input files read with errors that name the file and what is wrong with it.

A truncated, damaged or foreign file must not end in a traceback from deep inside numpy,
zipfile or ase: the readers here turn every such failure into an
:class:`UnreadableFileError` (a ``ValueError``) whose message starts with the path, which the
command line prints as one line.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import ase.io
import numpy as np

__all__ = ["UnreadableFileError", "read_npz", "read_structures"]

# What numpy and zipfile raise on a damaged archive: a cut-off end of the archive (the central
# directory is missing), a member cut short, a bad checksum, a corrupt deflate stream, or
# bytes that are no archive at all (numpy then refuses to unpickle them).
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class UnreadableFileError(ValueError):
    """A file that exists but cannot be read as what it should be.

    Attributes:
        path: the file.
        problem: what is wrong, without the path.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def read_npz(path: str | os.PathLike, *, what: str = "npz file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read in full (no pickle).

    Args:
        path: the archive.
        what: what the file should be, for the messages (e.g. ``"device file"``).

    Raises:
        FileNotFoundError: no such file.
        UnreadableFileError: not an npz archive, or a truncated or damaged one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    with open(path, "rb") as handle:
        signature = handle.read(4)
    if signature not in (b"PK\x03\x04", b"PK\x05\x06") and not signature.startswith(b"\x93NUM"):
        raise UnreadableFileError(path, f"not a readable {what}: not a zip archive (npz is one)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise UnreadableFileError(path, f"a single .npy array, not an npz archive ({what})")
        with archive:
            return {key: archive[key] for key in archive.files}
    except UnreadableFileError:
        raise
    except _NPZ_ERRORS as err:
        raise UnreadableFileError(
            path,
            f"not a readable {what} ({type(err).__name__}: {err}; truncated, damaged or of "
            "another format?)",
        ) from None


def read_structures(
    path: str | os.PathLike, *, index: str | int = ":", format: str | None = None
) -> list:
    """The structures (``ase.Atoms``) of a file ase can read: ``index=":"`` every frame,
    an integer one frame (``-1`` the last).

    Raises:
        FileNotFoundError: no such file.
        UnreadableFileError: ase cannot read it (malformed, truncated, an unknown format) or
            it holds no structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} not found")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as err:  # ase's readers raise many types for a malformed file
        raise UnreadableFileError(
            path, f"ase cannot read a structure from it ({type(err).__name__}: {err})"
        ) from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise UnreadableFileError(path, "holds no structure")
    return frames
