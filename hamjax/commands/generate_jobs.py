"""What a ``hamjax generate`` run computes: its typed JSON config and the structures it lists.

The config file is read by :func:`hamjax.config.load` into :class:`GenerateConfig`, so every
error names the file and the key (``devices[0].count``). :func:`plan_jobs` turns the config
and the command-line flags into one :class:`Job` per structure, each with a unique name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hamjax.config import ConfigError, load

__all__ = [
    "ENGINES",
    "DeviceGroup",
    "GenerateConfig",
    "Job",
    "StructureSource",
    "key_values",
    "load_config",
    "plan_jobs",
]

ENGINES = ("tblite", "pyscf")


# ----------------------------------------------------------------------------- config
def _engine(value) -> str:
    if value not in ENGINES:
        raise ValueError(f"must be one of {ENGINES}, got {value!r}")
    return value


def _non_negative_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DeviceGroup:
    """``count`` devices built by :func:`hamjax.structures.build_device`.

    Attributes:
        name: name prefix; the devices are named ``<name>-<seed>`` (seed in three digits).
        count: how many devices, with seeds ``seed, seed + 1, ...``.
        seed: seed of the first device.
        spec: :class:`hamjax.structures.DeviceSpec` fields shared by the group (not ``seed``).
    """

    name: str = "device"
    count: int = dataclasses.field(default=1, metadata={"from_json": _non_negative_int})
    seed: int = dataclasses.field(default=0, metadata={"from_json": _non_negative_int})
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StructureSource:
    """Structures read from a file by ``ase.io.read``.

    Attributes:
        path: the file; relative paths that do not exist from the working folder are taken
            relative to the config file.
        index: ase's frame selection (default ``":"``: every frame).
        name: file name stem of the outputs (default: the file's stem); several frames are
            named ``<name>-<k>``.
        format: ase's file format (default: guessed from the name).
    """

    path: str = ""
    index: int | str = ":"
    name: str | None = None
    format: str | None = None

    def __post_init__(self):
        if not self.path:
            raise ValueError("needs key 'path' (the structure file)")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The JSON config of ``hamjax generate`` (see its help for an example).

    Attributes:
        engine: reference engine, "tblite" or "pyscf".
        settings: engine settings (fields of ``TBLiteSettings`` or ``PySCFSettings``).
        devices: groups of devices to build.
        structures: structure files; a string is a path (every frame).
    """

    engine: str = dataclasses.field(default="tblite", metadata={"from_json": _engine})
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    devices: tuple[DeviceGroup, ...] = ()
    structures: tuple[str | StructureSource, ...] = ()

    def __post_init__(self):
        sources = tuple(
            StructureSource(path=item) if isinstance(item, str) else item
            for item in self.structures
        )
        object.__setattr__(self, "structures", sources)


def load_config(path: str | os.PathLike | None) -> GenerateConfig:
    """The config in ``path`` (the defaults without one); errors name the file and key."""
    if path is None:
        return GenerateConfig()
    return load(GenerateConfig, path)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` flags as a dict, values parsed as JSON when they are JSON."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


# ----------------------------------------------------------------------------- jobs
@dataclasses.dataclass
class Job:
    """One structure to compute: its file name stem, how to get it, and where it came from."""

    name: str
    source: dict
    make_atoms: Callable[[], Any]  # () -> ase.Atoms

    def output(self, folder: Path) -> Path:
        return folder / f"{self.name}.npz"


def _device_spec(fields: dict):
    """``DeviceSpec`` from a JSON-like dict; an unknown key is named in the error."""
    # deferred: ase and the structure builders are heavy, and the CLI imports this for --help
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


def _device_jobs(group: DeviceGroup, where: str) -> list[Job]:
    from hamjax.structures import build_device  # deferred: see _device_spec

    jobs = []
    for seed in range(group.seed, group.seed + group.count):
        try:
            spec = _device_spec({**group.spec, "seed": seed})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: bad device spec: {err}") from None

        def make(spec=spec):
            return build_device(spec)

        source = {"kind": "device", "spec": _jsonable(spec), "seed": seed}
        jobs.append(Job(name=f"{group.name}-{seed:03d}", source=source, make_atoms=make))
    return jobs


def _file_jobs(item: StructureSource, base: Path | None) -> list[Job]:
    from hamjax.io.files import read_structures  # deferred: ase, see _device_spec

    path = Path(item.path)
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    frames = read_structures(path, index=item.index, format=item.format)
    stem = item.name or path.stem
    jobs = []
    for k, atoms in enumerate(frames):
        name = stem if len(frames) == 1 else f"{stem}-{k:03d}"
        source = {"kind": "file", "path": str(path), "frame": k}
        jobs.append(Job(name=name, source=source, make_atoms=lambda a=atoms: a))
    return jobs


def plan_jobs(config: GenerateConfig, args, config_path: str | os.PathLike | None = None):
    """The structures of a run, from the config plus command-line flags, with unique names.

    Args:
        config: the run's config (:func:`load_config`).
        args: the parsed flags (``n_devices``, ``seed``, ``name``, ``device``, ``structures``).
        config_path: the config's file: named in errors, and the folder that relative
            structure paths may be relative to.

    Returns:
        list of :class:`Job`: the config's devices, the flags' devices, the config's
        structure files, the flags' structure files, in this order.
    """
    base = Path(config_path).parent if config_path is not None else None
    label = str(config_path) if config_path is not None else "config"
    jobs: list[Job] = []
    for k, group in enumerate(config.devices):
        jobs += _device_jobs(group, f"{label}: key 'devices[{k}].spec'")
    if args.n_devices is not None or args.device:
        count = args.n_devices if args.n_devices is not None else 1
        if count < 0:
            raise ValueError(f"--n-devices must be >= 0, got {count}")
        if args.seed is not None and args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        group = DeviceGroup(
            name=args.name or "device",
            count=count,
            seed=args.seed if args.seed is not None else 0,
            spec=key_values(args.device, "--device"),
        )
        jobs += _device_jobs(group, "command line --device")
    for item in config.structures:
        jobs += _file_jobs(item, base)
    for path in args.structures:
        jobs += _file_jobs(StructureSource(path=str(path)), None)
    seen = {}
    for job in jobs:
        if job.name in seen:
            raise ValueError(
                f"two structures are named {job.name!r} ({seen[job.name]} and "
                f"{job.source}); give them distinct names"
            )
        seen[job.name] = job.source
    return jobs
