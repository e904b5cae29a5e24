"""Read and write CP2K Kohn-Sham and overlap matrices (``KS_CSR_WRITE`` / ``S_CSR_WRITE``).

File format (from CP2K's CSR writer)
    No header; one record per stored element: ``row col value`` with 1-based global orbital
    indices. Text: ``(2(I8),E23.14E3)`` per line. Binary (``BINARY T``): Fortran unformatted
    sequential records ``[int32 16][int32 row][int32 col][float64 value][int32 16]``
    (little-endian). With ``UPPER_TRIANGULAR T`` only ``row <= col`` is written and the reader
    mirrors the rest. Values in Hartree (KS) or dimensionless (S). Orbitals: atoms in input
    order, shells as in the basis set, each shell ``m = -l..l`` (``p`` as y, z, x); CP2K's
    order equals hamjax's (:data:`hamjax.basis.ORBITAL_CONVENTIONS`, proven by rotation).

Files and the log
    A Gamma-point run writes ``PROJECT-KS_SPIN_1-1_0.csr`` and ``PROJECT-S_SPIN_1-1_0.csr``.
    ``REAL_SPACE T`` writes one file per cell image, ``PROJECT-KS_SPIN_1_R_<n>-1_0.csr``,
    and only the log tells which lattice vector image ``n`` is (:mod:`hamjax.io.cp2k_log`
    parses it, with the shells per kind, the coordinates, the cell and the Fermi energy;
    :class:`Cp2kLog` and :func:`parse_cp2k_log` are importable from here too). The real
    fixtures of this project are Gamma-point runs; the real-space path is tested on a
    synthetic log and files written to CP2K's layout.

Errors name the file and the line (text) or record (binary).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse

from hamjax.basis import Basis, from_hamjax_order, to_hamjax_order
from hamjax.blocks import BlockHamiltonian
from hamjax.io.cp2k_log import Cp2kLog, parse_cp2k_log
from hamjax.io.files import read_structures

__all__ = [
    "Cp2kLog",
    "parse_cp2k_log",
    "read_cp2k",
    "read_csr",
    "write_cp2k",
    "write_csr",
]

_BINARY_DTYPE = np.dtype(
    [("head", "<i4"), ("row", "<i4"), ("col", "<i4"), ("value", "<f8"), ("tail", "<i4")]
)


# ------------------------------------------------------------------------------ CSR files
def _is_binary(path: Path) -> bool:
    """A file that starts with CP2K's record marker (int32 16) is binary (text has no NUL)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and np.frombuffer(head, "<i4")[0] == 16


def _read_entries(path: Path, binary: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) with 1-based indices as stored."""
    if not path.exists():
        raise FileNotFoundError(f"CSR file {path} not found")
    if binary is None:
        binary = _is_binary(path)
    if binary:
        size = path.stat().st_size
        if size % _BINARY_DTYPE.itemsize:
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of 24-byte CP2K binary CSR records "
                "(a truncated file?)"
            )
        records = np.fromfile(path, dtype=_BINARY_DTYPE)
        bad = np.nonzero((records["head"] != 16) | (records["tail"] != 16))[0]
        if len(bad):
            r = int(bad[0])
            raise ValueError(
                f"{path}: record {r + 1} (byte {24 * r}): record markers "
                f"{records['head'][r]}/{records['tail'][r]}, expected 16/16 "
                "(not a CP2K binary CSR file)"
            )
        return records["row"].astype(np.int64), records["col"].astype(np.int64), records["value"]
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if b"\x00" in raw or "\ufffd" in text:
        raise ValueError(
            f"{path}: not a CP2K CSR file (binary content that is not CP2K's binary records)"
        )
    table = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns when it stops before the end
        try:
            table = np.fromstring(text, dtype=float, sep=" ")  # C parser, whitespace-separated
        except (ValueError, DeprecationWarning):
            table = None
    n_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if text and not text.endswith("\n"):
        *_, before, last = ["", *text.split("\n")]
        if len(last) < len(before):
            raise ValueError(
                f"{path}:{n_lines}: the last line is cut short ({last.strip()!r}): a truncated "
                "file?"
            )
    if table is None or table.size != 3 * n_lines:
        # blank lines, a wrong column count or a bad number: find the line, or accept blanks
        _diagnose_text(path, text)
        table = np.array(text.split(), dtype=float)
    table = table.reshape(-1, 3)
    rows, cols = table[:, 0], table[:, 1]
    for name, values in (("row", rows), ("column", cols)):
        bad = np.nonzero(values != np.round(values))[0]
        if len(bad):
            line = _line_of_record(text, int(bad[0]))
            raise ValueError(f"{path}:{line}: {name} index {values[bad[0]]} is not an integer")
    return rows.astype(np.int64), cols.astype(np.int64), table[:, 2]


def _diagnose_text(path: Path, text: str) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(
                f"{path}:{number}: expected 3 columns (row col value), got {len(words)}: "
                f"{line.strip()!r}"
            )
        for word in words:
            try:
                float(word)
            except ValueError:
                shown = word if len(word) <= 40 else word[:40] + "..."
                raise ValueError(f"{path}:{number}: non-numeric entry {shown!r}") from None


def _line_of_record(text: str, record: int) -> int:
    count = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            count += 1
            if count == record:
                return number
    return -1


def read_csr(
    path: str | os.PathLike,
    n_orbitals: int,
    *,
    binary: bool | None = None,
    upper_triangular: bool | None = None,
    require_diagonal: bool = False,
) -> scipy.sparse.csr_matrix:
    """One CP2K CSR file as a ``[n_orbitals, n_orbitals]`` sparse matrix in CP2K order.

    Args:
        path: the file; binary or text is detected when ``binary`` is None.
        n_orbitals: the orbital count the log gives; an index beyond it is an error.
        upper_triangular: mirror ``row < col`` into the lower triangle. None: mirror when the
            file holds no entry below the diagonal (a symmetric matrix written in full
            always has some).
        require_diagonal: every diagonal element must be stored, as in the home-cell (or
            Gamma) matrix of a CP2K run, which stores every on-site block: a file cut short
            after a whole line or record lacks the last ones.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CSR file {path} not found")
    binary = _is_binary(path) if binary is None else binary
    rows, cols, values = _read_entries(path, binary)
    _check_range(path, rows, cols, n_orbitals, binary)
    if require_diagonal:
        stored = np.zeros(n_orbitals + 1, dtype=bool)
        stored[rows[rows == cols]] = True
        missing = np.flatnonzero(~stored[1:])
        if len(missing):
            raise ValueError(
                f"{path}: no diagonal element for orbitals {missing[0] + 1}..{missing[-1] + 1} "
                f"of {n_orbitals} ({len(missing)} missing); a CP2K home-cell matrix stores every "
                "on-site block (a truncated file?)"
            )
    rows, cols = rows - 1, cols - 1
    if upper_triangular is None:
        upper_triangular = not np.any(rows > cols)
    elif upper_triangular and np.any(rows > cols):
        raise ValueError(f"{path}: entries below the diagonal in an upper-triangular file")
    if upper_triangular:
        off = rows != cols
        rows, cols, values = (
            np.concatenate([rows, cols[off]]),
            np.concatenate([cols, rows[off]]),
            np.concatenate([values, values[off]]),
        )
    return scipy.sparse.coo_matrix((values, (rows, cols)), shape=(n_orbitals,) * 2).tocsr()


def _check_range(path, rows, cols, n, binary):
    for name, values in (("row", rows), ("column", cols)):
        bad = np.nonzero((values < 1) | (values > n))[0]
        if len(bad):
            r = int(bad[0])
            where = f": record {r + 1}" if binary else f":{_line_of_text(path, r)}"
            raise ValueError(
                f"{path}{where}: {name} index {values[r]} outside 1..{n} (the orbital count "
                "from the log or basis; a file of another structure or basis?)"
            )


def _line_of_text(path: Path, record: int) -> int:
    return _line_of_record(path.read_text(errors="replace"), record)


def _format_value(value: float) -> str:
    """Fortran ``E23.14E3``: ``-0.22923247526053E+001``."""
    if value == 0.0:
        return (("-" if np.signbit(value) else "") + "0.00000000000000E+000").rjust(23)
    if not np.isfinite(value):
        return f"{value:23}"
    text = f"{value:.13E}"  # d.dddddddddddddE+xx, 14 significant digits
    mantissa, exponent = text.split("E")
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "")
    return f"{sign}0.{digits}E{int(exponent) + 1:+04d}".rjust(23)


def write_csr(
    path: str | os.PathLike,
    matrix,
    *,
    binary: bool = False,
    upper_triangular: bool = False,
    threshold: float | None = None,
) -> Path:
    """Write one matrix (CP2K order) as a CP2K CSR file, text or binary.

    Every stored entry is written (explicit zeros of stored blocks too, as CP2K does), sorted
    by row then column; with a ``threshold`` only entries with ``|value| > threshold``.
    Written atomically (temporary file in the same folder, then ``os.replace``).
    """
    path = Path(path)
    coo = scipy.sparse.coo_matrix(matrix)
    coo.sum_duplicates()
    keep = np.ones(coo.nnz, bool) if threshold is None else np.abs(coo.data) > threshold
    if upper_triangular:
        keep &= coo.row <= coo.col
    rows, cols, values = coo.row[keep] + 1, coo.col[keep] + 1, coo.data[keep]
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if binary:
            records = np.empty(len(rows), dtype=_BINARY_DTYPE)
            records["head"] = records["tail"] = 16
            records["row"], records["col"], records["value"] = rows, cols, values
            records.tofile(tmp)
        else:
            with open(tmp, "w") as handle:
                handle.writelines(
                    f"{r:8d}{c:8d}{_format_value(v)}\n"
                    for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True)
                )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------- read / write
def _default_files(log: Cp2kLog, label: str, spin: int) -> list[Path]:
    folder = log.path.parent
    if not log.project:
        raise ValueError(f"{log.path}: no project name in the log; pass the CSR file names")
    if label in log.images:
        return [
            folder / f"{log.project}-{label}_SPIN_{spin}_R_{n}-1_0.csr"
            for n in sorted(log.images[label])
        ]
    return [folder / f"{log.project}-{label}_SPIN_{spin}-1_0.csr"]


def _image_of(path: Path, table: Mapping[int, tuple[int, int, int]] | None) -> tuple[int, int, int]:
    match = re.search(r"_R_(\d+)-", path.name)
    if match is None:
        if table:
            raise ValueError(f"{path}: no image number (_R_<n>) in a REAL_SPACE run's file name")
        return (0, 0, 0)
    if not table:
        raise ValueError(
            f"{path}: a REAL_SPACE image file, but no 'CSR write| N periodic images' table was "
            "found in the log"
        )
    n = int(match.group(1))
    if n not in table:
        raise ValueError(f"{path}: image {n} is not in the log's image table (1..{len(table)})")
    return tuple(int(x) for x in table[n])


def _read_set(
    files: Sequence[Path], table, n: int, binary, upper_triangular
) -> dict[tuple[int, int, int], scipy.sparse.csr_matrix]:
    raw = {}
    for path in files:
        shift = _image_of(Path(path), table)
        if shift in raw:
            raise ValueError(f"{path}: image {shift} given twice")
        home = shift == (0, 0, 0)
        raw[shift] = read_csr(path, n, binary=binary, upper_triangular=False, require_diagonal=home)
    if upper_triangular is None:
        upper_triangular = all(scipy.sparse.tril(m, k=-1).nnz == 0 for m in raw.values()) and any(
            m.nnz for m in raw.values()
        )
    if not upper_triangular:
        return raw
    out = {}
    for shift, m in raw.items():
        partner = tuple(-x for x in shift)
        if partner not in raw:
            raise ValueError(
                f"upper-triangular REAL_SPACE files: image {shift} has no partner {partner} to "
                "mirror from"
            )
        upper = scipy.sparse.triu(m, k=0)
        lower = scipy.sparse.tril(raw[partner].T, k=-1)  # H_ij(R) = H_ji(-R) for i > j
        out[shift] = (upper + lower).tocsr()
    return out


def read_cp2k(
    log: str | os.PathLike | None,
    *,
    ks: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    overlap: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    structure: str | os.PathLike | None = None,
    basis: Basis | None = None,
    images: Mapping[int, Sequence[int]] | None = None,
    binary: bool | None = None,
    upper_triangular: bool | None = None,
    spin: int = 1,
    threshold: float = 0.0,
) -> BlockHamiltonian:
    """Read a CP2K run's KS (and S) matrices into a block record in hamjax order.

    Args:
        log: the CP2K output log (shells per kind, atoms, cell, Fermi energy, image table) of
            a finished run (a log without CP2K's closing banner is an error). May be None when
            ``basis``, ``structure`` and (for REAL_SPACE) ``images`` are given.
        ks: KS CSR file, or the list of REAL_SPACE image files; default from the project name
            in the log (``PROJECT-KS_SPIN_1-1_0.csr`` or ``..._R_<n>-1_0.csr``).
        overlap: S CSR file(s) likewise; default from the log when such files exist.
        structure: a structure file for ase (e.g. the run's ``.xyz``, 8 decimals); default
            the coordinates of the log (6 decimals) and its cell and periodicity.
        basis: shells per element instead of the log's listing.
        images: ``{n: (X, Y, Z)}`` instead of the log's image table.
        binary, upper_triangular: None detects them from the files.
        spin: spin channel in the default file names.
        threshold: blocks whose entries are all at most this are dropped.

    Returns:
        :class:`~hamjax.blocks.BlockHamiltonian` (Hartree, hamjax orbital order), with the
        Fermi level (Hartree) from the log and metadata (source, version, files, units).
    """
    parsed = parse_cp2k_log(log) if log is not None else None
    if parsed is not None:
        parsed.check_complete()
    if structure is not None:
        atoms = read_structures(structure, index=-1)[0]
        numbers, positions = atoms.numbers, atoms.positions
        cell, pbc = atoms.cell.array, atoms.pbc
        if parsed is not None and parsed.symbols:
            if list(atoms.get_chemical_symbols()) != parsed.symbols:
                raise ValueError(f"{structure}: its elements differ from those in {parsed.path}")
            cell = parsed.cell if parsed.cell is not None else cell
            pbc = parsed.pbc if parsed.pbc is not None else pbc
    elif parsed is not None and parsed.symbols:
        numbers, positions = parsed.numbers, parsed.positions
        cell = parsed.cell if parsed.cell is not None else np.zeros((3, 3))
        pbc = parsed.pbc if parsed.pbc is not None else np.zeros(3, bool)
    else:
        raise ValueError("no structure: give a CP2K log with coordinates or structure=")
    if basis is None:
        if parsed is None:
            raise ValueError("no basis: give a CP2K log (PRINT_LEVEL MEDIUM) or basis=")
        basis = parsed.basis()
    counts = basis.orbital_counts(numbers)
    if parsed is not None and parsed.kind_orbitals and parsed.kind_of_atom:
        expected = parsed.orbital_counts()
        if len(expected) == len(counts) and np.any(expected != counts):
            atom = int(np.nonzero(expected != counts)[0][0])
            raise ValueError(
                f"{parsed.path}: atom {atom} has {expected[atom]} orbitals in the log but "
                f"{counts[atom]} in basis {basis.name!r}"
            )
    n = int(counts.sum())

    def table_for(label):
        if images is not None:
            return {int(k): tuple(v) for k, v in images.items()}
        if parsed is not None:
            return parsed.images.get(label) or parsed.images.get("KS")
        return None

    def files_for(label, given):
        if given is not None:
            return (
                [Path(given)] if isinstance(given, (str, os.PathLike)) else [Path(p) for p in given]
            )
        if parsed is None:
            raise ValueError(f"no {label} files: give them or a CP2K log with a project name")
        return _default_files(parsed, label, spin)

    ks_files = files_for("KS", ks)
    ks_set = _read_set(ks_files, table_for("KS"), n, binary, upper_triangular)
    s_set = None
    s_files = []
    if overlap is not None or parsed is not None:
        s_files = files_for("S", overlap)
        if overlap is not None or all(p.exists() for p in s_files):
            s_set = _read_set(s_files, table_for("S"), n, binary, upper_triangular)
        else:
            s_files = []
    if s_set is not None and set(s_set) != set(ks_set):
        for shift in set(ks_set) | set(s_set):  # an image missing on one side holds zeros
            ks_set.setdefault(shift, scipy.sparse.csr_matrix((n, n)))
            s_set.setdefault(shift, scipy.sparse.csr_matrix((n, n)))
    h = {s: to_hamjax_order(m, basis, numbers, "cp2k") for s, m in ks_set.items()}
    s = (
        None
        if s_set is None
        else {k: to_hamjax_order(m, basis, numbers, "cp2k") for k, m in s_set.items()}
    )
    metadata = {
        "source": "cp2k",
        "code_version": parsed.version if parsed else None,
        "basis": basis.name,
        "units": {"hamiltonian": "hartree", "positions": "angstrom", "fermi_level": "hartree"},
        "files": [str(p) for p in ks_files + s_files],
        "log": str(parsed.path) if parsed else None,
        "real_space": len(h) > 1 or (0, 0, 0) not in h,
    }
    return BlockHamiltonian.from_dense(
        numbers,
        positions,
        cell,
        pbc,
        basis,
        h,
        s,
        threshold=threshold,
        fermi_level=parsed.fermi_level if parsed else None,
        metadata=metadata,
    )


def write_cp2k(
    record: BlockHamiltonian,
    path_prefix: str | os.PathLike,
    *,
    binary: bool = False,
    upper_triangular: bool = False,
    real_space: bool | None = None,
    threshold: float | None = None,
    spin: int = 1,
) -> list[Path]:
    """Export a record's H (and S) as CP2K CSR files in CP2K orbital order.

    Gamma (``real_space=False``, the default for a record with only shift (0, 0, 0)): the
    matrices summed over shifts go to ``PREFIX-KS_SPIN_1-1_0.csr`` and
    ``PREFIX-S_SPIN_1-1_0.csr``. Real space (default when the record has other shifts): one
    file per shift, ``PREFIX-KS_SPIN_1_R_<n>-1_0.csr``, image 1 = (0, 0, 0), and the image table
    in CP2K's log layout in ``PREFIX-csr_images.txt`` (readable by :func:`parse_cp2k_log`).

    Returns:
        The paths written.
    """
    prefix = Path(path_prefix)
    shifts = sorted(
        {tuple(int(x) for x in s) for s in record.shifts}, key=lambda s: (s != (0, 0, 0), s)
    )
    if real_space is None:
        real_space = shifts != [(0, 0, 0)] and len(shifts) > 0
    which = [("KS", "hamiltonian")] + ([("S", "overlap")] if record.overlap is not None else [])
    written = []
    if not real_space:
        for label, name in which:
            m = from_hamjax_order(record.to_sparse(name), record.basis, record.numbers, "cp2k")
            written.append(
                write_csr(
                    f"{prefix}-{label}_SPIN_{spin}-1_0.csr",
                    m,
                    binary=binary,
                    upper_triangular=upper_triangular,
                    threshold=threshold,
                )
            )
        return written
    if (0, 0, 0) not in shifts:
        shifts = [(0, 0, 0)] + shifts
    shift_index = {s: k for k, s in enumerate(shifts)}
    block_image = np.array([shift_index[tuple(int(x) for x in s)] for s in record.shifts])
    n = record.n_orbitals
    lines = []
    for label, name in which:
        values = getattr(record, name)
        rows, cols = record.entry_indices
        per_value = np.repeat(block_image, np.diff(record.block_offsets))
        for k in range(len(shifts)):
            sel = per_value == k
            m = scipy.sparse.coo_matrix((values[sel], (rows[sel], cols[sel])), shape=(n, n))
            m = from_hamjax_order(m.tocsr(), record.basis, record.numbers, "cp2k")
            written.append(
                write_csr(
                    f"{prefix}-{label}_SPIN_{spin}_R_{k + 1}-1_0.csr",
                    m,
                    binary=binary,
                    upper_triangular=upper_triangular,
                    threshold=threshold,
                )
            )
        lines.append(f" {label} CSR write| {len(shifts):5d} periodic images")
        lines.append("      Number    X      Y      Z")
        lines += [f" {k + 1:9d} {x:6d} {y:6d} {z:6d}" for k, (x, y, z) in enumerate(shifts)]
    table = Path(f"{prefix}-csr_images.txt")
    table.write_text("\n".join(lines) + "\n")
    written.append(table)
    return written
