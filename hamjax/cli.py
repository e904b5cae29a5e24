"""The ``hamjax`` command line: a thin layer over the library functions.

Each subcommand lives in its own module under :mod:`hamjax.commands` and exposes two
functions, ``add_arguments(parser)`` and ``run(args) -> int``; the module docstring is the
subcommand's help (its first line the summary), shown as plain text (:func:`plain_text`).
Subcommand modules import their heavy dependencies only when they run, so
``hamjax --help`` stays fast.

float64 is enabled here, in the entry point, never on import of the library. Bad input
(the errors file readers raise) is reported as one line ``hamjax COMMAND: error: ...`` with
exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import zipfile
from pathlib import Path

import hamjax

# name -> module; a missing module simply does not show up as a subcommand.
SUBCOMMANDS = {
    "demo": "hamjax.commands.demo",
    "transport": "hamjax.commands.transport",
    "generate": "hamjax.commands.generate",
    "train": "hamjax.commands.train",
    "predict": "hamjax.commands.predict",
    "evaluate": "hamjax.commands.evaluate",
    "models": "hamjax.commands.models",
}


def _available() -> dict[str, str]:
    return {
        name: module
        for name, module in SUBCOMMANDS.items()
        if importlib.util.find_spec(module) is not None
    }


# :role:`text` (also :py:role:`text`), with text "target", "~a.b.target" or "title <target>"
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _role_text(match: re.Match) -> str:
    text = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<[^<>]+>", text, flags=re.DOTALL)
    if titled:
        return titled.group(1)
    if text.startswith("~"):
        return text[1:].rsplit(".", 1)[-1]
    return text.lstrip("!")


def plain_text(text: str) -> str:
    """reST markup of a docstring as plain text: roles become their text, literals quoted.

    >>> plain_text("Written by :func:`hamjax.io.dataset.save` to ``OUT/<name>.npz``.")
    "Written by hamjax.io.dataset.save to 'OUT/<name>.npz'."
    >>> plain_text(":func:`~hamjax.transport.transmission`, :class:`the spec <DeviceSpec>`")
    'transmission, the spec'
    """
    return _LITERAL.sub(r"'\1'", _ROLE.sub(_role_text, text))


class _PlainTextFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as written in the docstrings (line breaks kept), reST markup as plain text."""

    def format_help(self) -> str:
        return plain_text(super().format_help())


def version() -> str:
    """The installed package's version (its metadata), else ``hamjax.__version__``."""
    try:
        return importlib.metadata.version("hamjax")
    except importlib.metadata.PackageNotFoundError:
        return hamjax.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hamjax",
        description="Equivariant neural-network Hamiltonians and differentiable NEGF transport.",
        formatter_class=_PlainTextFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hamjax {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _available().items():
        module = importlib.import_module(module_name)
        doc = plain_text(module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc or None,
            formatter_class=_PlainTextFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _xla_cpu_flags() -> None:
    """Single-threaded Eigen in XLA:CPU (unless the user set it).

    With the multi-threaded Eigen pool, a vmapped transmission on the CPU wedged here once
    for good: every XLA worker parked in ``Eigen::EventCount::CommitWait`` and the process
    idle at 0% CPU. ``--xla_cpu_multi_thread_eigen=false`` is the known workaround; XLA's
    own parallelism across operations remains.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def _quiet_jax() -> None:
    """No JAX platform warnings on the CLI's output ("An NVIDIA GPU may be present ...",
    "Platform ... is experimental"): jax picks its backend without them. Only the CLI does
    this; importing hamjax leaves JAX's logging alone. An explicit jax_logging_level wins."""
    if "JAX_LOGGING_LEVEL" not in os.environ:
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)


# What a reader raises on a bad file: the readers raise ValueError / FileNotFoundError with
# the file named; the others are a safety net for errors escaping from a reader.
INPUT_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def _input_paths(args: argparse.Namespace) -> list[Path]:
    """The existing files and folders among the parsed path arguments."""
    found = []
    for name, value in vars(args).items():
        if name.startswith("_"):
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path) and item.exists():
                found.append(item)
    return found


def error_message(err: BaseException, args: argparse.Namespace) -> str:
    """One line for an input error; names the input file when the error does not and the
    command had only one."""
    if isinstance(err, zipfile.BadZipFile):
        text = f"not a readable .npz/zip file ({err})"
    elif isinstance(err, EOFError):
        text = f"file ended early ({err})" if str(err) else "file ended early"
    else:
        text = str(err) or type(err).__name__
    paths = _input_paths(args)
    named = any(str(p) in text or p.name in text for p in paths)
    files = [p for p in paths if p.is_file()]
    if len(files) == 1 and not named:
        text = f"{files[0]}: {text}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    _xla_cpu_flags()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    _quiet_jax()
    import jax  # deferred: --help and argument errors need no JAX

    jax.config.update("jax_enable_x64", True)
    try:
        return int(args._module.run(args) or 0)
    except INPUT_ERRORS as err:
        print(f"hamjax {args.command}: error: {error_message(err, args)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
