"""Build VCM devices or read structures and compute their reference Hamiltonians.

Every structure becomes one dataset file ``OUT/<name>.npz`` (written atomically by
:func:`hamjax.io.dataset.save`), and ``OUT/manifest.json`` lists them with their source,
size, SCF cycles and wall time. Runs are resumable: a structure whose file already exists and
loads is skipped, so an interrupted run continues where it stopped (a file cut short by a
kill never carries the final name, and an unreadable one is recomputed).

Each reference runs in a child process, started with the system OpenBLAS preloaded when one
is installed (Debian: ``libopenblas0-pthread``), which makes tblite several times faster;
``HAMJAX_OPENBLAS=0`` turns that off and ``--in-process`` runs everything in this process.

Config (JSON), every key optional except that devices or structures must give something:

    {
      "engine": "tblite",                      # or "pyscf"
      "settings": {"electronic_temperature_hartree": 0.01},
      "devices": [                             # built by hamjax.structures.build_device
        {"name": "random", "count": 4, "seed": 0, "spec": {...}}
      ],
      "structures": ["cells.extxyz", {"path": "more.xyz", "index": ":"}]
    }

Device ``count`` copies use seeds ``seed, seed + 1, ...`` and are named ``<name>-<seed>``.
A structures entry is a file name or an object with ``path`` and optionally ``index`` (ase's
frame selection), ``name`` (output stem) and ``format`` (ase's file format).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from hamjax.commands.generate_jobs import (
    ENGINES,
    GenerateConfig,
    Job,
    key_values,
    load_config,
    plan_jobs,
)

__all__ = ["MANIFEST", "GenerateConfig", "Job", "add_arguments", "load_config", "plan_jobs", "run"]

MANIFEST = "manifest.json"


class _DeprecatedAlias(argparse.Action):
    """Stores like the option it stands for, with a note on stderr to use the new name."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON config (see above)")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--out", type=Path, help="output folder")
    out.add_argument(
        "--output",
        dest="out",
        type=Path,
        action=_DeprecatedAlias,
        new_name="--out",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--structures",
        nargs="+",
        type=Path,
        default=[],
        help="structure files readable by ase (extxyz, xyz, cif, POSCAR ...); every frame",
    )
    parser.add_argument("--engine", choices=ENGINES, help="reference engine")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine setting, e.g. --set electronic_temperature_hartree=0.02 (repeatable)",
    )
    parser.add_argument("--n-devices", type=int, help="number of devices to build")
    parser.add_argument("--seed", type=int, help="seed of the first device")
    parser.add_argument("--name", default=None, help="name prefix of built devices")
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="device spec field for hamjax.structures.build_device, e.g. "
        "--device vacancy_mode=filament (repeatable; values parsed as JSON when possible)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="give up on one structure after this many seconds",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="compute in this process (no child process, no BLAS preload)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute structures whose files exist"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the structures and exit")


# ----------------------------------------------------------------------------- state
def _is_done(path: Path) -> bool:
    """A finished structure: the file exists and loads as a dataset record."""
    if not path.is_file():
        return False
    from hamjax.io.dataset import load  # deferred: numpy and more, not needed by --help

    try:
        load(path)
    except Exception:
        return False
    return True


def _write_json_atomic(path: Path, data) -> None:
    from hamjax.io.atomic import write_text  # deferred: as in _is_done

    write_text(path, json.dumps(data, indent=1, default=str))


def _compute(job: Job, atoms, output: Path, engine: str, settings: dict, args) -> dict:
    # deferred: the engines import tblite / PySCF, and the CLI imports us for --help
    if args.in_process:
        from hamjax.io.dataset import save
        from hamjax.reference import SCFConvergenceError, compute_reference
        from hamjax.reference.worker import summarise

        t0 = time.perf_counter()
        try:
            record = compute_reference(atoms, engine, name=job.name, **settings)
        except SCFConvergenceError as err:
            return {"status": "not-converged", "error": str(err), "attempts": err.attempts}
        except (ValueError, RuntimeError) as err:
            return {"status": "error", "error": f"{type(err).__name__}: {err}"}
        save(record, output)
        result = summarise(record, output)
        result.update(status="done", process_wall_time_s=time.perf_counter() - t0)
        return result
    from hamjax.reference.worker import compute_in_subprocess

    return compute_in_subprocess(
        atoms, output, engine=engine, settings=settings, name=job.name, timeout_s=args.timeout_s
    )


def run(args) -> int:
    config = load_config(args.config)
    engine = args.engine or config.engine
    flags = key_values(args.set, "--set")
    settings_class = _settings_class(engine)
    _check_keys(config.settings, settings_class, engine, f"{args.config}: key 'settings'")
    _check_keys(flags, settings_class, engine, "--set")
    settings = {**config.settings, **flags}
    try:
        settings_class(**settings)
    except TypeError as err:
        raise ValueError(f"{engine} settings: {err}") from None
    jobs = plan_jobs(config, args, args.config)
    if not jobs:
        raise ValueError(
            "nothing to generate: give --config with 'devices' or 'structures', "
            "--structures FILES, or --n-devices"
        )
    if args.dry_run:
        for job in jobs:
            print(job.name, json.dumps(job.source))
        return 0

    from tqdm import tqdm  # deferred: only a run needs it, not --help

    folder = args.out
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    manifest = {"engine": engine, "settings": settings, "structures": {}}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
            manifest["structures"].update(old.get("structures", {}))
        except (json.JSONDecodeError, AttributeError):
            pass  # rebuilt from the files below
    failures = 0
    # disable=None: no bar when stderr is not a terminal (logs, pipes)
    bar = tqdm(jobs, desc="references", unit="structure", file=sys.stderr, disable=None)
    for job in bar:
        output = job.output(folder)
        entry = manifest["structures"].get(job.name, {})
        if not args.overwrite and _is_done(output):
            if entry.get("source") not in (None, job.source):
                raise ValueError(
                    f"{output} was made from {entry['source']}, but the config now gives "
                    f"{job.source} for {job.name!r}; use --overwrite or another output folder"
                )
            entry.update(name=job.name, file=output.name, source=job.source, status="done")
            manifest["structures"][job.name] = entry
            bar.set_postfix_str(f"{job.name}: done before")
            continue
        bar.set_postfix_str(f"{job.name}: building")
        atoms = job.make_atoms()
        bar.set_postfix_str(f"{job.name}: {len(atoms)} atoms")
        result = _compute(job, atoms, output, engine, settings, args)
        result.update(
            name=job.name,
            file=output.name,
            source=job.source,
            n_atoms=len(atoms),
            formula=atoms.get_chemical_formula(),
        )
        manifest["structures"][job.name] = result
        if result.get("status") != "done":
            failures += 1
            tqdm.write(
                f"hamjax generate: {job.name}: {result.get('status')}: {result.get('error')}",
                file=sys.stderr,
            )
        _write_json_atomic(manifest_path, manifest)
    _write_json_atomic(manifest_path, manifest)
    done = sum(1 for j in jobs if manifest["structures"][j.name].get("status") == "done")
    print(f"{done}/{len(jobs)} structures done in {folder} (manifest: {manifest_path})")
    return 0 if failures == 0 else 1


def _settings_class(engine: str) -> type:
    """The settings dataclass of ``engine``: its fields are the valid settings."""
    # deferred: the engines import tblite / PySCF, and the CLI imports this module for --help
    if engine == "tblite":
        from hamjax.reference.tblite import TBLiteSettings

        return TBLiteSettings
    from hamjax.reference.pyscf import PySCFSettings

    return PySCFSettings


def _check_keys(settings: dict, cls: type, engine: str, where: str) -> None:
    """Raise ValueError naming ``where`` if ``settings`` has a key that ``cls`` lacks."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - allowed
    if unknown:
        raise ValueError(
            f"{where}: unknown {engine} setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
