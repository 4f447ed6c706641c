"""The code's shape, checked on every run: layers that only point down (import-linter's contract in pyproject.toml),
no import cycle inside the package, and ruff's rules."""

import subprocess
import sys
from pathlib import Path

import grimp
from helpers import REPO

BIN = Path(sys.executable).parent


def test_layers_only_point_down():
    result = subprocess.run([str(BIN / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "1 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def test_no_import_cycle_inside_the_package():
    """Function-local imports count too: a cycle hidden inside a function is still a cycle."""
    graph = grimp.build_graph("lit_finetune")
    assert "lit_finetune.commands.fit" in graph.modules
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, sorted(cycles)


def test_ruff_finds_nothing():
    result = subprocess.run([str(BIN / "ruff"), "check", "lit_finetune", "tests", "benchmarks"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
