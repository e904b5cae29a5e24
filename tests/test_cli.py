"""The ``hamjax`` command line: version, plain-text help, error lines, the generate config."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hamjax import cli
from hamjax.cli import build_parser, error_message, main, plain_text
from hamjax.commands.generate_jobs import (
    DeviceGroup,
    GenerateConfig,
    StructureSource,
    load_config,
    plan_jobs,
)

RAW_MARKUP = (":func:", ":mod:", ":class:", ":data:", ":attr:", ":meth:", "``")


def _run_cli(*argv, cwd=None):
    """``hamjax ARGV`` in a fresh interpreter, as from a shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return subprocess.run(
        [sys.executable, "-m", "hamjax.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


# ----------------------------------------------------------------------------- version, help
def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"hamjax {importlib.metadata.version('hamjax')}\n"


def test_plain_text_renders_roles_and_literals():
    assert plain_text(":func:`hamjax.transport.transmission`") == "hamjax.transport.transmission"
    assert plain_text(":func:`~hamjax.transport.transmission`") == "transmission"
    assert plain_text(":class:`the spec <hamjax.structures.DeviceSpec>`") == "the spec"
    assert plain_text(":py:meth:`Basis.orbital_counts`") == "Basis.orbital_counts"
    assert plain_text("set ``HAMJAX_OPENBLAS=0`` here") == "set 'HAMJAX_OPENBLAS=0' here"
    text = "T(E) = (4 - E^2) / (5 - E^2), `layers` [n] int: ratio 3:2"
    assert plain_text(text) == text  # no markup: unchanged


def test_every_help_is_plain_text(capsys):
    pages = {"hamjax": _help(capsys)}
    for name, module_name in cli.SUBCOMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        pages[name] = _help(capsys, name)
        # the summary line of the top-level help is the docstring's first line
        first = plain_text(importlib.import_module(module_name).__doc__).strip().splitlines()[0]
        assert first.split()[0] in pages["hamjax"]
    for name, page in pages.items():
        found = [m for m in RAW_MARKUP if m in page]
        assert not found, f"hamjax {name} --help shows raw markup {found}"
    # the generate docstring has roles and literals; its help has their text
    doc = importlib.import_module("hamjax.commands.generate").__doc__
    assert ":func:`hamjax.io.dataset.save`" in doc and "``OUT/manifest.json``" in doc
    assert "hamjax.io.dataset.save" in pages["generate"]
    assert "'OUT/manifest.json'" in pages["generate"]


def test_help_and_a_run_print_nothing_but_hamjax_output(tmp_path):
    for argv in (["--help"], ["generate", "--help"], ["demo", "--help"]):
        done = _run_cli(*argv)
        assert done.returncode == 0 and done.stderr == "", (argv, done.stderr)
        assert done.stdout.startswith("usage: hamjax")
    done = _run_cli(
        "transport", "--out", tmp_path / "t", "--energies", "-1", "1", "5", "--chunk-size", "2"
    )
    assert done.returncode == 0
    assert done.stderr == ""  # no JAX platform warning, no progress bar on a pipe
    assert "T exact" in done.stdout and (tmp_path / "t" / "transport.json").is_file()


# ----------------------------------------------------------------------------- error lines
def test_error_message_names_the_only_input_file(tmp_path):
    npz = tmp_path / "device.npz"
    npz.write_bytes(b"PK\x03\x04 cut")
    args = argparse.Namespace(command="transport", input=npz, out=tmp_path / "o", _module=None)
    for err in (
        zipfile.BadZipFile("File is not a zip file"),
        EOFError(),
        OSError("Failed to interpret file as a pickle"),
    ):
        text = error_message(err, args)
        assert text.startswith(f"{npz}: ") and "\n" not in text
    # already named: not named twice; several input files: none picked
    assert error_message(ValueError(f"{npz.name}: bad layers"), args) == "device.npz: bad layers"
    other = tmp_path / "other.npz"
    other.write_bytes(b"")
    args.extra = [other]
    assert error_message(EOFError("cut"), args) == "file ended early (cut)"


# ----------------------------------------------------------------------------- generate
def _generate(*argv):
    return main(["generate", *map(str, argv)])


def _write(path: Path, config) -> Path:
    path.write_text(json.dumps(config))
    return path


def test_generate_out_flag_and_its_old_name(tmp_path, capsys):
    parser = build_parser()
    for flag in ("-o", "--out", "--output"):
        assert parser.parse_args(["generate", flag, "folder"]).out == Path("folder")
    assert "--output" in capsys.readouterr().err  # the deprecation note
    page = _help(capsys, "generate")
    assert "-o OUT, --out OUT" in page and "--output" not in page

    structures = tmp_path / "mols.xyz"
    structures.write_text("1\n\nH 0 0 0\n1\n\nHe 0 0 3\n")
    for flag in ("-o", "--output"):
        assert _generate("--structures", structures, flag, tmp_path / "out", "--dry-run") == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == ["mols-000", "mols-001"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--dry-run"])
    assert "-o/--out is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"devices": [{"name": "x", "cout": 2}]}, "'devices[0].cout'"),
        ({"devices": [{}, {"count": -1}]}, "'devices[1].count'"),
        ({"devices": [{"seed": 1.5}]}, "'devices[0].seed'"),
        ({"devices": [{"count": True}]}, "'devices[0].count'"),
        ({"devices": [{"spec": [1]}]}, "'devices[0].spec'"),
        ({"devices": [{"spec": {"vacancy_mod": "random"}}]}, "'devices[0].spec'"),
        ({"devices": {"name": "x"}}, "'devices'"),
        ({"engine": "vasp"}, "'engine'"),
        ({"settings": [1]}, "'settings'"),
        ({"settings": {"temperature": 0.01}}, "'settings'"),
        ({"structures": "mols.xyz"}, "'structures'"),
        ({"structures": ["a.xyz", 5]}, "'structures[1]'"),
        ({"structures": [{"index": 0}]}, "structures[0]: needs key 'path'"),
        ({"structures": [{"path": "a.xyz", "frames": 1}]}, "'structures[0].frames'"),
        ({"device": []}, "'device'"),
    ],
)
def test_generate_config_errors_name_file_and_key(tmp_path, capsys, config, named):
    path = _write(tmp_path / "cfg.json", config)
    assert _generate("--config", path, "-o", tmp_path / "out", "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hamjax generate: error: {path}: ") and err.count("\n") == 1
    assert named in err
    assert not (tmp_path / "out").exists()


def test_generate_config_is_typed_and_plans_the_jobs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pair.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    path = _write(
        tmp_path / "cfg.json",
        {
            "engine": "pyscf",
            "settings": {"basis": "sto-3g"},
            "devices": [{"name": "dev", "count": 2, "seed": 3, "spec": {"oxide": "crystalline"}}],
            "structures": ["data/pair.xyz", {"path": "data/pair.xyz", "name": "h2", "index": 0}],
        },
    )
    config = load_config(path)
    assert config == GenerateConfig(
        engine="pyscf",
        settings={"basis": "sto-3g"},
        devices=(DeviceGroup(name="dev", count=2, seed=3, spec={"oxide": "crystalline"}),),
        structures=(
            StructureSource(path="data/pair.xyz"),
            StructureSource(path="data/pair.xyz", index=0, name="h2"),
        ),
    )
    assert load_config(None) == GenerateConfig()
    flags = argparse.Namespace(n_devices=1, seed=7, name=None, device=["gap_side=ti"])
    flags.structures = []
    jobs = plan_jobs(config, flags, path)
    assert [job.name for job in jobs] == ["dev-003", "dev-004", "device-007", "pair", "h2"]
    specs = [job.source["spec"] for job in jobs[:3]]
    assert [s["seed"] for s in specs] == [3, 4, 7]
    assert [s["oxide"] for s in specs] == ["crystalline", "crystalline", "amorphous"]
    assert specs[2]["gap_side"] == "ti"
    # the relative path is found next to the config, not in the working folder
    assert jobs[3].source == {"kind": "file", "path": str(tmp_path / "data/pair.xyz"), "frame": 0}
    atoms = jobs[4].make_atoms()
    assert atoms.get_chemical_formula() == "H2" and atoms.get_distance(0, 1) == 0.74
