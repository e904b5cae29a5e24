"""The code's own rules, checked on every run: lint, format, layering of the package.

* ``ruff check`` and ``ruff format --check`` pass on the whole tree (config in pyproject.toml);
* no import cycle among hamjax's modules (module-level imports);
* no module imports another module's private (underscore) names;
* no module of the package is over 600 lines.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hamjax"
MAX_LINES = 600


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe is not None, "ruff is part of the test extras: pip install '.[test]'"
    return [exe]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    paths = ["hamjax", "tests", "experiments", "benchmarks"]
    result = subprocess.run(
        [*_ruff(), *args, *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every module-level import of a hamjax module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("hamjax")]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            if target.startswith("hamjax"):
                names = [a.name for a in node.names]
                # ``from hamjax.pkg import submodule`` imports the submodule
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                out.append((target, [n for n in names if f"{target}.{n}" not in modules]))
                out += [(s, []) for s in subs]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for target, _ in _imports(module, path, modules):
            # importing a.b.c runs a/__init__ and a/b/__init__ as well, unless the importer
            # lives inside that package (whose __init__ then runs already)
            parts = target.split(".")
            parents = {".".join(parts[:k]) for k in range(1, len(parts))}
            edges.add(target)
            edges |= {p for p in parents if not module.startswith(p + ".")}
        graph[module] = {t for t in edges if t in modules and t != module}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        for target, names in _imports(module, path, modules):
            package = target.rsplit(".", 1)[0]
            same_package = module.startswith(package + ".") or module == package
            for name in names:
                private = name.startswith("_") and not name.startswith("__")
                if private and not (same_package and target.split(".")[-1].startswith("_")):
                    offenders.append(f"{module} imports {name} from {target}")
    assert not offenders, "\n".join(offenders)


def test_module_size():
    long = {
        m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
