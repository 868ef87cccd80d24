"""The shape of the code that ARCHITECTURE.md promises: no import cycles between modules, no private names
imported across packages, no module over 400 lines, no if/elif chain over architecture or backend names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent / "interp"


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("interp")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, cycles


def test_no_private_name_imported_from_another_package():
    offenders = []
    for path in ROOT.rglob("*.py"):
        package = ".".join(path.relative_to(ROOT.parent).parts[:2])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("interp."):
                other = ".".join(node.module.split(".")[:2])
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and other != package:
                    offenders.append(f"{path.relative_to(ROOT)}: {node.module} {private}")
    assert not offenders, offenders


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_no_if_elif_over_architecture_or_backend_names():
    pattern = re.compile(r"(arch|architecture|backend)\s*(==|in)\s*[\"'(]")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert not hits, hits
