"""Predicted blocks on disk in parts, and the merge into one block record and CP2K CSR files,
streamed: no step holds the whole matrix.

Streamed (and distributed) prediction (:mod:`hamjax.distributed`) writes the blocks of each
tile as soon as they are predicted, appended to the part files of its process; process 0
merges the parts when every process is done. A folder of parts::

    run.json              format "hamjax-parts", the run id, process count, basis, metadata
    structure.npz         numbers, positions, cell, pbc of the structure
    rank-00000.keys       int64 [B_r, 5]: (i, j, shift) of every block, raw
    rank-00000.values     [V_r] block entries, row-major, in the predictions' dtype
    rank-00000.overlap    float64 [V_r]: overlap entries (only when S is carried over)
    rank-00000.atoms      int64 [A_r, 5]: (atom, first block, blocks, first value, values)
    rank-00000.json       written last, when the process has finished: counts and timings

A tile's blocks are sorted by ``(i, j, shift)`` and every block of atom ``i`` (its row of
blocks) comes from the one tile that owns ``i``, so every atom's row is one contiguous run
in one process's files; the ``.atoms`` table says where. The merge walks the atoms in
order, a chunk at a time, and gathers each atom's run from memory-mapped files: the record's
block order (that of :func:`hamjax.inference.blocks_to_record`) comes out without a global
sort, and memory is bounded by the chunk.

* :func:`write_record` writes the dataset file (:mod:`hamjax.io.dataset` layout, npz), one
  npz member at a time, each streamed in chunks (:func:`write_npz`); ``dataset.load`` reads
  it like any other.
* :func:`hamjax.io.parts_cp2k.write_cp2k_parts` writes the CP2K CSR files of
  :func:`hamjax.io.write_cp2k` chunk by chunk (the same files, byte for byte).
* :func:`load_record` assembles the record in memory (small structures, tests).

A process that fails leaves no ``rank-*.json``; :class:`Parts` then names the rank instead
of merging a partial matrix.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.io import dataset
from hamjax.io.atomic import replacing

__all__ = [
    "PARTS_FORMAT",
    "PartWriter",
    "Parts",
    "load_record",
    "prepare_folder",
    "rank_summaries",
    "write_npz",
    "write_record",
]

PARTS_FORMAT = "hamjax-parts"
_VERSION = 1
_KEY_COLUMNS = 5  # i, j, shift x, y, z
_ATOM_COLUMNS = 5  # atom, first block, blocks, first value, values


def _rank_stem(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}"


def _basis_json(basis: Basis) -> dict:
    return {"name": basis.name, "shells": {str(z): list(ls) for z, ls in basis.shells}}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def prepare_folder(
    folder: str | os.PathLike,
    structure,
    basis: Basis,
    *,
    run: str,
    n_ranks: int,
    metadata: dict,
    has_overlap: bool = False,
) -> Path:
    """Create (or empty) a parts folder and write ``run.json`` and ``structure.npz``.

    Only process 0 calls this, before the others write (a barrier in between). Part files
    of an earlier run in the folder are deleted; other files are left alone.

    Args:
        folder: the folder (created with its parents).
        structure: :class:`hamjax.tiles.Structure` (numbers, positions, cell, pbc).
        basis: the model's basis.
        run: an id shared by the processes of this run (checked at the merge).
        n_ranks: number of processes.
        metadata: the record's metadata (JSON-ready).
        has_overlap: the ranks write overlap entries too.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rank-*"):
        old.unlink()
    np.savez(
        folder / "structure.npz",
        numbers=np.asarray(structure.numbers, np.int64),
        positions=np.asarray(structure.positions, np.float64),
        cell=np.asarray(structure.cell, np.float64),
        pbc=np.asarray(structure.pbc, bool),
    )
    _write_json(
        folder / "run.json",
        {
            "format": PARTS_FORMAT,
            "version": _VERSION,
            "run": run,
            "n_ranks": int(n_ranks),
            "n_atoms": len(structure.numbers),
            "basis": _basis_json(basis),
            "metadata": metadata,
            "has_overlap": bool(has_overlap),
        },
    )
    return folder


class PartWriter:
    """Appends one process's blocks to its part files.

    Args:
        folder: the parts folder (prepared by process 0).
        rank: this process.
        run: the run id of ``run.json``.
        orbital_counts: ``[n_atoms]`` orbitals of every atom.
        has_overlap: overlap entries come with every append.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        rank: int,
        run: str,
        orbital_counts: np.ndarray,
        *,
        has_overlap: bool = False,
    ):
        self.folder = Path(folder)
        self.rank, self.run = int(rank), run
        self.counts = np.asarray(orbital_counts, dtype=np.int64)
        self.value_dtype: np.dtype | None = None  # the first append's (the predictions')
        self.has_overlap = has_overlap
        stem = _rank_stem(self.folder, self.rank)
        suffixes = ["keys", "values", "atoms"] + (["overlap"] if has_overlap else [])
        self._files = {s: open(f"{stem}.{s}", "wb") for s in suffixes}  # noqa: SIM115
        self.n_blocks = self.n_values = self.n_atoms = 0
        self.shifts: set[tuple[int, int, int]] = set()

    def append(self, pairs, shifts, values, overlap=None) -> None:
        """Blocks of some atoms: ``pairs [B, 2]`` sorted by ``i`` with every block of each
        atom ``i`` present (a tile's labelled blocks, :func:`hamjax.tiles.labelled_blocks`),
        ``shifts [B, 3]`` and their entries ``values [V]`` (and ``overlap [V]``)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
        sizes = self.counts[pairs[:, 0]] * self.counts[pairs[:, 1]]
        if len(values) != int(sizes.sum()):
            raise ValueError(f"{len(values)} values for blocks of {int(sizes.sum())} entries")
        if self.has_overlap and (overlap is None or len(overlap) != len(values)):
            raise ValueError("this part writer needs overlap entries with every append")
        first = pairs[:, 0]
        if len(first) and np.any(np.diff(first) < 0):
            raise ValueError("blocks must come sorted by their first atom")
        atoms, starts, n_blocks = np.unique(first, return_index=True, return_counts=True)
        value_start = np.concatenate([[0], np.cumsum(sizes)])[starts]
        table = np.stack(
            [
                atoms,
                self.n_blocks + starts,
                n_blocks,
                self.n_values + value_start,
                np.add.reduceat(sizes, starts) if len(sizes) else sizes,
            ],
            axis=1,
        ).astype(np.int64)
        np.concatenate([pairs, shifts], axis=1).tofile(self._files["keys"])
        values = np.asarray(values)
        if self.value_dtype is None:
            self.value_dtype = values.dtype
        values.astype(self.value_dtype, copy=False).tofile(self._files["values"])
        table.tofile(self._files["atoms"])
        if self.has_overlap:
            np.asarray(overlap, dtype=np.float64).tofile(self._files["overlap"])
        self.shifts.update(map(tuple, np.unique(shifts, axis=0).tolist()))
        self.n_blocks += len(pairs)
        self.n_values += len(values)
        self.n_atoms += len(atoms)

    def close(self, summary: dict | None = None) -> Path:
        """Flush the files and write ``rank-<r>.json`` (the sign that this rank is done)."""
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        path = Path(f"{_rank_stem(self.folder, self.rank)}.json")
        _write_json(
            path,
            {
                "run": self.run,
                "rank": self.rank,
                "blocks": self.n_blocks,
                "values": self.n_values,
                "atoms": self.n_atoms,
                "shifts": sorted(self.shifts),
                "value_dtype": str(self.value_dtype or np.dtype(np.float64)),
                "summary": summary or {},
            },
        )
        return path


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(starts - before, counts) + np.arange(total)


class Parts:
    """A finished parts folder, read through memory maps.

    Raises:
        FileNotFoundError: not a parts folder (no ``run.json``).
        ValueError: a rank that has not finished (no ``rank-<r>.json``), files of another
            run or truncated files, an atom predicted by no rank or by two; the message
            names the folder and the rank.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        run_file = self.folder / "run.json"
        if not run_file.is_file():
            raise FileNotFoundError(f"{self.folder}: no run.json (not a parts folder)")
        self.run = json.loads(run_file.read_text())
        if self.run.get("format") != PARTS_FORMAT:
            raise ValueError(f"{run_file}: not a {PARTS_FORMAT} folder")
        with np.load(self.folder / "structure.npz") as data:
            self.numbers = data["numbers"]
            self.positions, self.cell, self.pbc = data["positions"], data["cell"], data["pbc"]
        info = self.run["basis"]
        self.basis = Basis.from_dict(info["name"], {int(z): ls for z, ls in info["shells"].items()})
        self.metadata = dict(self.run["metadata"])
        self.has_overlap = bool(self.run["has_overlap"])
        n_atoms = len(self.numbers)
        self.counts = self.basis.orbital_counts(self.numbers)
        self.keys, self.values, self.overlap, self.manifests = [], [], [], []
        owner = np.full(n_atoms, -1, dtype=np.int64)
        table = np.zeros((n_atoms, 4), dtype=np.int64)
        for rank in range(int(self.run["n_ranks"])):
            stem = _rank_stem(self.folder, rank)
            manifest_path = Path(f"{stem}.json")
            if not manifest_path.is_file():
                raise ValueError(
                    f"{self.folder}: rank {rank} has not finished ({manifest_path.name} is "
                    "missing): a process failed or is still running"
                )
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("run") != self.run["run"]:
                raise ValueError(f"{manifest_path}: written by another run than run.json's")
            self.manifests.append(manifest)
            self.keys.append(self._check(stem, "keys", np.int64, (manifest["blocks"], 5)))
            dtype = np.dtype(manifest["value_dtype"])
            self.values.append(self._check(stem, "values", dtype, (manifest["values"],)))
            if self.has_overlap:
                self.overlap.append(self._check(stem, "overlap", np.float64, (manifest["values"],)))
            atoms = self._open(self._check(stem, "atoms", np.int64, (manifest["atoms"], 5)))
            atoms = np.array(atoms)
            twice = atoms[owner[atoms[:, 0]] >= 0, 0] if len(atoms) else atoms[:, 0]
            if len(twice):
                raise ValueError(
                    f"{self.folder}: atom {int(twice[0])} predicted by rank {rank} and by rank "
                    f"{int(owner[twice[0]])}"
                )
            if len(np.unique(atoms[:, 0])) != len(atoms):
                raise ValueError(f"{self.folder}: rank {rank} lists an atom twice")
            owner[atoms[:, 0]] = rank
            table[atoms[:, 0]] = atoms[:, 1:]
        missing = np.flatnonzero(owner < 0)
        if len(missing):
            raise ValueError(
                f"{self.folder}: {len(missing)} atom(s) predicted by no rank (first: atom "
                f"{int(missing[0])})"
            )
        self.owner = owner
        self.block_start, self.block_count = table[:, 0], table[:, 1]
        self.value_start, self.value_count = table[:, 2], table[:, 3]
        self.n_blocks = int(self.block_count.sum())
        self.n_values = int(self.value_count.sum())
        self.shifts = sorted({tuple(s) for m in self.manifests for s in m["shifts"]})

    @staticmethod
    def _check(stem: Path, suffix: str, dtype, shape) -> tuple:
        """``(path, dtype, shape)`` of a part file whose size its manifest confirms."""
        path = Path(f"{stem}.{suffix}")
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = path.stat().st_size if path.is_file() else -1
        if size != expected:
            raise ValueError(
                f"{path}: {size} bytes, its rank's manifest says {expected} (truncated or missing)"
            )
        return path, np.dtype(dtype), tuple(int(n) for n in shape)

    @staticmethod
    def _open(spec: tuple) -> np.ndarray:
        """A read-only memory map of a part file (mapped per use: the pages read leave the
        process's resident memory when the map is dropped)."""
        path, dtype, shape = spec
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def chunks(self, max_values: int = 4_000_000) -> Iterator[tuple[int, int]]:
        """Atom ranges ``[a, b)`` of at most ``max_values`` entries (at least one atom)."""
        ends = np.cumsum(self.value_count)
        a = 0
        while a < self.n_atoms:
            base = ends[a - 1] if a else 0
            b = int(np.searchsorted(ends, base + max_values, side="right"))
            b = max(b, a + 1)
            yield a, b
            a = b

    def rows(self, a: int, b: int, what=("keys", "values", "overlap")) -> dict:
        """The blocks of atoms ``a <= i < b`` in record order: ``{"keys": [B, 5] int64,
        "values": [V] float64, "overlap": [V] float64}`` (those asked for)."""
        owner = self.owner[a:b]
        bs, bc = self.block_start[a:b], self.block_count[a:b]
        vs, vc = self.value_start[a:b], self.value_count[a:b]
        block_dst = np.concatenate([[0], np.cumsum(bc)])
        value_dst = np.concatenate([[0], np.cumsum(vc)])
        out = {}
        if "keys" in what:
            out["keys"] = np.empty((int(block_dst[-1]), _KEY_COLUMNS), dtype=np.int64)
        for name in ("values", "overlap"):
            if name in what and (name == "values" or self.has_overlap):
                out[name] = np.empty(int(value_dst[-1]), dtype=np.float64)
        for rank in np.unique(owner).tolist():
            mine = owner == rank
            if "keys" in out:
                dst = _ranges(block_dst[:-1][mine], bc[mine])
                out["keys"][dst] = self._open(self.keys[rank])[_ranges(bs[mine], bc[mine])]
            src = dst = None
            for name, arrays in (("values", self.values), ("overlap", self.overlap)):
                if name in out:
                    if src is None:
                        src = _ranges(vs[mine], vc[mine])
                        dst = _ranges(value_dst[:-1][mine], vc[mine])
                    out[name][dst] = self._open(arrays[rank])[src]
        return out

    def chunk_record(self, a: int, b: int) -> BlockHamiltonian:
        """The blocks of atoms ``a <= i < b`` as a record of the whole structure (its other
        rows empty): what the CP2K writer turns into rows of the matrix."""
        rows = self.rows(a, b)
        return self._record(rows)

    def _record(self, rows: dict) -> BlockHamiltonian:
        keys = rows["keys"]
        return BlockHamiltonian(
            numbers=np.asarray(self.numbers, dtype=np.int64),
            positions=np.asarray(self.positions, dtype=float),
            cell=np.asarray(self.cell, dtype=float),
            pbc=np.asarray(self.pbc, dtype=bool),
            basis=self.basis,
            pairs=np.ascontiguousarray(keys[:, :2]),
            shifts=np.ascontiguousarray(keys[:, 2:]),
            hamiltonian=rows["values"],
            overlap=rows.get("overlap"),
            metadata=dict(self.metadata),
        )

    def summaries(self) -> list[dict]:
        """Every rank's summary (timings, memory), in rank order."""
        return [m.get("summary", {}) for m in self.manifests]


def rank_summaries(folder: str | os.PathLike) -> list[dict]:
    """The summaries of the ranks that have finished (their ``rank-<r>.json``), rank order;
    no checks (a partial run's too)."""
    paths = sorted(Path(folder).glob("rank-*.json"))
    return [json.loads(p.read_text()).get("summary", {}) for p in paths]


def load_record(folder: str | os.PathLike) -> BlockHamiltonian:
    """The whole record of a parts folder, in memory (for structures that fit)."""
    parts = Parts(folder)
    return parts._record(parts.rows(0, parts.n_atoms))


# ------------------------------------------------------------------------- npz streaming
def _npy_header(handle, dtype: np.dtype, shape: tuple) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(handle, header)
    except ValueError:  # a header over 64 KiB (never for these arrays)
        np.lib.format.write_array_header_2_0(handle, header)


def write_npz(path: str | os.PathLike, members: Iterable[tuple]) -> Path:
    """Write an ``.npz`` (the layout of ``np.savez``) member by member, atomically.

    Args:
        path: the target file.
        members: ``(name, array)`` for a small member, or ``(name, dtype, shape, chunks)``
            for a large one: ``chunks`` yields arrays whose entries, concatenated in C order,
            fill ``shape`` (only one chunk is in memory at a time).

    Returns:
        The path. A temporary file in the target's folder is renamed over the target once
        complete, so a killed writer leaves no partial file.
    """
    path = Path(path)
    with replacing(path) as tmp_name:
        with zipfile.ZipFile(tmp_name, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for member in members:
                name = member[0]
                with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                    if len(member) == 2:
                        np.lib.format.write_array(out, np.asarray(member[1]), allow_pickle=False)
                        continue
                    _, dtype, shape, chunks = member
                    dtype = np.dtype(dtype)
                    _npy_header(out, dtype, tuple(int(s) for s in shape))
                    written = 0
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        out.write(chunk.data if chunk.size else b"")
                        written += chunk.size
                    if written != int(np.prod(shape)):
                        raise RuntimeError(
                            f"npz member {name}: {written} entries written, shape {shape} "
                            f"needs {int(np.prod(shape))}"
                        )
    return path


def write_record(
    parts: Parts | str | os.PathLike,
    path: str | os.PathLike,
    *,
    max_values: int = 4_000_000,
    progress=None,
) -> Path:
    """The dataset file (:func:`hamjax.io.dataset.save` layout) of a parts folder, streamed.

    Equal to ``dataset.save(load_record(folder), path)`` (a test checks every array), with
    at most ``max_values`` block entries in memory at a time.

    Args:
        parts: a :class:`Parts` or its folder.
        path: the ``.npz`` to write.
        max_values: chunk size (block entries).
        progress: optional callable taking a line of text.
    """
    parts = parts if isinstance(parts, Parts) else Parts(parts)
    chunks = list(parts.chunks(max_values))
    say = progress or (lambda _: None)

    def keys(columns):
        for k, (a, b) in enumerate(chunks):
            if k % 50 == 0 and len(chunks) > 50:
                say(f"merge: {columns} {k}/{len(chunks)}")
            yield parts.rows(a, b, ("keys",))["keys"][:, columns]

    def offsets():
        yield np.zeros(1, dtype=np.int64)
        total = 0
        for a, b in chunks:
            pairs = parts.rows(a, b, ("keys",))["keys"][:, :2]
            sizes = parts.counts[pairs[:, 0]] * parts.counts[pairs[:, 1]]
            ends = total + np.cumsum(sizes)
            total = int(ends[-1]) if len(ends) else total
            yield ends

    def values(name):
        for k, (a, b) in enumerate(chunks):
            if k % 50 == 0 and len(chunks) > 50:
                say(f"merge: {name} {k}/{len(chunks)}")
            yield parts.rows(a, b, (name,))[name]

    n_blocks, n_values = parts.n_blocks, parts.n_values
    members = [
        ("format", np.array(dataset.FORMAT)),
        ("version", np.array(dataset.VERSION, dtype=np.int64)),
        ("numbers", np.asarray(parts.numbers, dtype=np.int64)),
        ("positions", np.asarray(parts.positions, dtype=np.float64)),
        ("cell", np.asarray(parts.cell, dtype=np.float64)),
        ("pbc", np.asarray(parts.pbc, dtype=bool)),
        ("basis", np.array(json.dumps(_basis_json(parts.basis)))),
        ("orbital_offsets", np.concatenate([[0], np.cumsum(parts.counts)]).astype(np.int64)),
        ("pairs", np.int64, (n_blocks, 2), keys(slice(0, 2))),
        ("shifts", np.int64, (n_blocks, 3), keys(slice(2, 5))),
        ("block_offsets", np.int64, (n_blocks + 1,), offsets()),
        ("hamiltonian", np.float64, (n_values,), values("values")),
    ]
    if parts.has_overlap:
        members.append(("overlap", np.float64, (n_values,), values("overlap")))
    members += [
        ("fermi_level", np.array(np.nan, dtype=np.float64)),
        ("metadata", np.array(json.dumps(parts.metadata, sort_keys=True))),
    ]
    return write_npz(path, members)
