"""The documentation: the site builds without warnings, the README stays short and runs
the commands CI runs, and every relative link leads to a file."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO_COMMAND = "pip install . && hamjax demo --out demo_out"
# Markdown links and images: [text](target) or ![alt](target), target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def test_site_builds_strict_without_warnings(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "api" / "transport" / "index.html").is_file()


def test_readme_is_short_and_runs_the_ci_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 259
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    test_command = ci_lines[-1].strip()
    assert "pytest" in test_command
    assert test_command in lines
    assert DEMO_COMMAND in lines


def markdown_files():
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_point_to_files():
    missing = []
    for page in markdown_files():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing
    assert len(markdown_files()) > 5
