"""CP2K CSR files of a parts folder (:mod:`hamjax.io.parts`), written a chunk of rows at a
time: the files of :func:`hamjax.io.write_cp2k`, byte for byte, without the whole matrix.

A CSR file is a list of entries sorted by row, then column, and the atoms of a chunk own a
contiguous range of rows (in hamjax's and in CP2K's orbital order alike: the two differ only
inside an atom). So every chunk's rows are made exactly as ``write_cp2k`` makes the whole
matrix (:meth:`~hamjax.blocks.BlockHamiltonian.to_sparse`,
:func:`~hamjax.basis.from_hamjax_order`, :func:`~hamjax.io.write_csr`) and appended to the
file; the rows of a chunk see the same entries in the same order, so even the sums of a
Gamma-point matrix over cell images come out bit for bit the same.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse

from hamjax.basis import from_hamjax_order
from hamjax.io.cp2k import write_csr
from hamjax.io.parts import Parts

__all__ = ["write_cp2k_parts"]


def write_cp2k_parts(
    parts: Parts | str | os.PathLike,
    path_prefix: str | os.PathLike,
    *,
    binary: bool = False,
    upper_triangular: bool = False,
    real_space: bool | None = None,
    threshold: float | None = None,
    spin: int = 1,
    max_values: int = 4_000_000,
    progress=None,
) -> list[Path]:
    """Export the H (and S) of a parts folder as CP2K CSR files, streamed.

    Arguments and files as :func:`hamjax.io.write_cp2k` (Gamma: the sum over shifts in
    ``PREFIX-KS_SPIN_1-1_0.csr``; real space, the default when there are non-zero shifts:
    one file per shift and ``PREFIX-csr_images.txt``); ``max_values`` block entries are in
    memory at a time. Every file is written under a temporary name and renamed when
    complete.

    Returns:
        The paths written.
    """
    parts = parts if isinstance(parts, Parts) else Parts(parts)
    prefix = Path(path_prefix)
    say = progress or (lambda _: None)
    shifts = sorted(
        {tuple(int(x) for x in s) for s in parts.shifts}, key=lambda s: (s != (0, 0, 0), s)
    )
    if real_space is None:
        real_space = shifts != [(0, 0, 0)] and len(shifts) > 0
    which = [("KS", "hamiltonian")] + ([("S", "overlap")] if parts.has_overlap else [])
    if real_space and (0, 0, 0) not in shifts:
        shifts = [(0, 0, 0)] + shifts
    shift_index = {s: k for k, s in enumerate(shifts)}
    names = {}
    for label, _ in which:
        if real_space:
            names[label] = [
                Path(f"{prefix}-{label}_SPIN_{spin}_R_{k + 1}-1_0.csr") for k in range(len(shifts))
            ]
        else:
            names[label] = [Path(f"{prefix}-{label}_SPIN_{spin}-1_0.csr")]
    final = [path for label, _ in which for path in names[label]]
    temporary = [p.with_name(f".{p.name}.tmp{os.getpid()}") for p in final]
    scratch = prefix.with_name(f".{prefix.name}.chunk{os.getpid()}.csr")
    handles = {p: open(t, "wb") for p, t in zip(final, temporary, strict=True)}  # noqa: SIM115
    n = int(parts.counts.sum())
    chunks = list(parts.chunks(max_values))

    def append(path: Path, matrix) -> None:
        write_csr(
            scratch, matrix, binary=binary, upper_triangular=upper_triangular, threshold=threshold
        )
        with open(scratch, "rb") as piece:
            shutil.copyfileobj(piece, handles[path], length=1 << 22)

    try:
        for k, (a, b) in enumerate(chunks):
            if k % 50 == 0 and len(chunks) > 50:
                say(f"cp2k: chunk {k}/{len(chunks)}")
            record = parts.chunk_record(a, b)
            if real_space:
                block_image = np.array(
                    [shift_index[s] for s in map(tuple, record.shifts.tolist())], dtype=np.int64
                )
                per_value = np.repeat(block_image, np.diff(record.block_offsets))
                rows, cols = record.entry_indices
            for label, name in which:
                if not real_space:
                    m = from_hamjax_order(
                        record.to_sparse(name), record.basis, record.numbers, "cp2k"
                    )
                    append(names[label][0], m)
                    continue
                values = getattr(record, name)
                for image in range(len(shifts)):
                    sel = per_value == image
                    m = scipy.sparse.coo_matrix(
                        (values[sel], (rows[sel], cols[sel])), shape=(n, n)
                    ).tocsr()
                    m = from_hamjax_order(m, record.basis, record.numbers, "cp2k")
                    append(names[label][image], m)
        for handle in handles.values():
            handle.close()
        for tmp, path in zip(temporary, final, strict=True):
            os.replace(tmp, path)
    finally:
        for handle in handles.values():
            handle.close()
        for tmp in [*temporary, scratch]:
            if tmp.exists():
                tmp.unlink()
    written = list(final)
    if real_space:
        lines = []
        for label, _ in which:
            lines.append(f" {label} CSR write| {len(shifts):5d} periodic images")
            lines.append("      Number    X      Y      Z")
            lines += [f" {k + 1:9d} {x:6d} {y:6d} {z:6d}" for k, (x, y, z) in enumerate(shifts)]
        table = Path(f"{prefix}-csr_images.txt")
        table.write_text("\n".join(lines) + "\n")
        written.append(table)
    return written
