"""The ``hamjax`` command line: a thin layer over the library functions.

Each subcommand lives in its own module under :mod:`hamjax.commands` and exposes two
functions, ``add_arguments(parser)`` and ``run(args) -> int``, plus a one-line module
docstring used as the subcommand's help. Modules are imported only when their subcommand
runs, so ``hamjax --help`` stays fast.

float64 is enabled here, in the entry point, never on import of the library.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# name -> module; a missing module simply does not show up as a subcommand.
SUBCOMMANDS = {
    "demo": "hamjax.commands.demo",
    "transport": "hamjax.commands.transport",
    "generate": "hamjax.commands.generate",
    "train": "hamjax.commands.train",
    "predict": "hamjax.commands.predict",
    "evaluate": "hamjax.commands.evaluate",
}


def _available() -> dict[str, str]:
    return {
        name: module
        for name, module in SUBCOMMANDS.items()
        if importlib.util.find_spec(module) is not None
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hamjax",
        description="Equivariant neural-network Hamiltonians and differentiable NEGF transport.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _available().items():
        module = importlib.import_module(module_name)
        help_text = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        p = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
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


def main(argv: list[str] | None = None) -> int:
    _xla_cpu_flags()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is reported as one clear line, not a traceback.
        print(f"hamjax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
