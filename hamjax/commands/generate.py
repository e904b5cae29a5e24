"""Build VCM devices or read structures and compute their reference Hamiltonians.

Every structure becomes one dataset file ``OUTPUT/<name>.npz`` (written atomically by
:func:`hamjax.io.dataset.save`), and ``OUTPUT/manifest.json`` lists them with their source,
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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "load_config", "plan_jobs", "Job"]

_TOP_KEYS = {"engine", "settings", "devices", "structures"}
_DEVICE_KEYS = {"name", "count", "seed", "spec"}
_STRUCTURE_KEYS = {"path", "index", "name", "format"}
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Job:
    """One structure to compute: its file name stem, how to get it, and where it came from."""

    name: str
    source: dict
    make_atoms: object  # () -> ase.Atoms

    def output(self, folder: Path) -> Path:
        return folder / f"{self.name}.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON config (see above)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--structures",
        nargs="+",
        type=Path,
        default=[],
        help="structure files readable by ase (extxyz, xyz, cif, POSCAR ...); every frame",
    )
    parser.add_argument("--engine", choices=("tblite", "pyscf"), help="reference engine")
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


# ----------------------------------------------------------------------------- config
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def load_config(path: Path | None) -> dict:
    """Read and check a generate config; errors name the file and the offending key."""
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config {path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config {path}: the top level must be an object")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ValueError(
            f"config {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    if "engine" in config and config["engine"] not in ("tblite", "pyscf"):
        raise ValueError(
            f"config {path}: key 'engine' must be 'tblite' or 'pyscf', not {config['engine']!r}"
        )
    if not isinstance(config.get("settings", {}), dict):
        raise ValueError(f"config {path}: key 'settings' must be an object")
    devices = config.get("devices", [])
    if not isinstance(devices, list):
        raise ValueError(f"config {path}: key 'devices' must be a list")
    for k, group in enumerate(devices):
        where = f"config {path}: devices[{k}]"
        if not isinstance(group, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(group) - _DEVICE_KEYS
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_DEVICE_KEYS)}"
            )
        for key in ("count", "seed"):
            if key in group and (not isinstance(group[key], int) or group[key] < 0):
                raise ValueError(f"{where}: key {key!r} must be a non-negative integer")
        if not isinstance(group.get("spec", {}), dict):
            raise ValueError(f"{where}: key 'spec' must be an object")
    structures = config.get("structures", [])
    if not isinstance(structures, list):
        raise ValueError(f"config {path}: key 'structures' must be a list")
    for k, item in enumerate(structures):
        if isinstance(item, dict):
            unknown = set(item) - _STRUCTURE_KEYS
            if unknown or "path" not in item:
                raise ValueError(
                    f"config {path}: structures[{k}] needs key 'path' and only "
                    f"{sorted(_STRUCTURE_KEYS)}; got {sorted(item)}"
                )
        elif not isinstance(item, str):
            raise ValueError(f"config {path}: structures[{k}] must be a path or an object")
    config["_path"] = str(path)
    return config


def _device_jobs(group: dict, where: str) -> list[Job]:
    from hamjax.structures import build_device

    name = group.get("name", "device")
    count = int(group.get("count", 1))
    seed0 = int(group.get("seed", 0))
    fields = dict(group.get("spec", {}))
    jobs = []
    for seed in range(seed0, seed0 + count):
        try:
            spec = _device_spec({**fields, "seed": seed})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: bad device spec: {err}") from None

        def make(spec=spec):
            return build_device(spec)

        source = {"kind": "device", "spec": _jsonable(spec), "seed": seed}
        jobs.append(Job(name=f"{name}-{seed:03d}", source=source, make_atoms=make))
    return jobs


def _device_spec(fields: dict):
    """``DeviceSpec`` from a JSON-like dict; an unknown key is named in the error."""
    from hamjax.structures import DeviceSpec

    allowed = {f.name for f in dataclasses.fields(DeviceSpec)}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; DeviceSpec has {sorted(allowed)}")
    return DeviceSpec.from_json(json.dumps(fields))


def _jsonable(spec) -> dict:
    if dataclasses.is_dataclass(spec):
        spec = dataclasses.asdict(spec)
    return json.loads(json.dumps(spec, default=lambda o: getattr(o, "tolist", lambda: str(o))()))


def _file_jobs(item, base: Path | None) -> list[Job]:
    import ase.io

    if isinstance(item, (str, Path)):
        item = {"path": str(item)}
    path = Path(item["path"])
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} does not exist")
    index = item.get("index", ":")
    try:
        frames = ase.io.read(path, index=index, format=item.get("format"))
    except Exception as err:  # ase raises many types for malformed files
        raise ValueError(f"cannot read structures from {path}: {err}") from None
    if not isinstance(frames, list):
        frames = [frames]
    stem = item.get("name", path.stem)
    jobs = []
    for k, atoms in enumerate(frames):
        name = stem if len(frames) == 1 else f"{stem}-{k:03d}"
        source = {"kind": "file", "path": str(path), "frame": k}
        jobs.append(Job(name=name, source=source, make_atoms=lambda a=atoms: a))
    return jobs


def plan_jobs(config: dict, args) -> list[Job]:
    """The structures of a run, from the config plus command-line flags, with unique names."""
    base = Path(config["_path"]).parent if "_path" in config else None
    jobs: list[Job] = []
    for k, group in enumerate(config.get("devices", [])):
        jobs += _device_jobs(group, f"config {config.get('_path')}: devices[{k}]")
    if args.n_devices is not None or args.device:
        group = {
            "name": args.name or "device",
            "count": args.n_devices if args.n_devices is not None else 1,
            "seed": args.seed if args.seed is not None else 0,
            "spec": _key_values(args.device, "--device"),
        }
        if group["count"] < 0:
            raise ValueError(f"--n-devices must be >= 0, got {group['count']}")
        jobs += _device_jobs(group, "command line --device")
    for item in config.get("structures", []):
        jobs += _file_jobs(item, base)
    for path in args.structures:
        jobs += _file_jobs(str(path), None)
    seen = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(
                f"two structures are named {job.name!r} ({seen[job.name]} and "
                f"{job.source}); give them distinct names"
            )
        seen[job.name] = job.source
    return jobs


# ----------------------------------------------------------------------------- state
def _is_done(path: Path) -> bool:
    """A finished structure: the file exists and loads as a dataset record."""
    if not path.is_file():
        return False
    from hamjax.io.dataset import load

    try:
        load(path)
    except Exception:
        return False
    return True


def _write_json_atomic(path: Path, data) -> None:
    from hamjax.io.atomic import write_text

    write_text(path, json.dumps(data, indent=1, default=str))


def _compute(job: Job, atoms, output: Path, engine: str, settings: dict, args) -> dict:
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
    engine = args.engine or config.get("engine", "tblite")
    settings = {**config.get("settings", {}), **_key_values(args.set, "--set")}
    if engine == "tblite":
        from hamjax.reference.tblite import TBLiteSettings

        TBLiteSettings(**_checked(settings, TBLiteSettings, "tblite"))
    else:
        from hamjax.reference.pyscf import PySCFSettings

        PySCFSettings(**_checked(settings, PySCFSettings, "pyscf"))
    jobs = plan_jobs(config, args)
    if not jobs:
        raise ValueError(
            "nothing to generate: give --config with 'devices' or 'structures', "
            "--structures FILES, or --n-devices"
        )
    if args.dry_run:
        for job in jobs:
            print(job.name, json.dumps(job.source))
        return 0

    from tqdm import tqdm

    folder = args.output
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
    bar = tqdm(jobs, desc="references", unit="structure", file=sys.stderr)
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


def _checked(settings: dict, cls, engine: str) -> dict:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - allowed
    if unknown:
        raise ValueError(
            f"unknown {engine} setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return settings
