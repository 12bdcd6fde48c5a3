"""The house: folders by concern, no import circles (not even behind a lazy import), no
Kafka client under the engine, the wire format or models/, and docstring
cross-references that resolve."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Folder -> import name (pyproject's package-dir).
FOLDERS = {
    "eddy": "eddy",
    "models": "eddy.models",
    "streams": "eddy.streams",
    "consumers": "eddy.consumers",
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in [*(ROOT / folder).rglob("*.py"), *(ROOT / folder).rglob("*.pyx")]:
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """eddy modules ``name`` imports anywhere in its body (functions included)."""
    if path.suffix == ".pyx":
        return set()  # compiled: it imports only C and Python's standard library
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def test_no_module_imports_itself_back_through_others():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_each_folder_holds_at_most_about_ten_modules():
    sizes = Counter(path.parent for path in MODULES.values() if path.name != "__init__.py")
    crowded = {str(folder.relative_to(ROOT)): n for folder, n in sizes.items() if n > 11}
    assert crowded == {}


@pytest.mark.parametrize(
    "module",
    [
        "eddy.streams.engine.unit",
        "eddy.streams.wire.codec",
        "eddy.models.prequential",
        "eddy.testing",
    ],
)
def test_the_engine_wire_format_models_and_harness_load_no_kafka_client(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('aiokafka', 'confluent_kafka', 'faust') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


_REFERENCE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?(eddy\.[\w.]+)`")


def _resolves(target: str) -> bool:
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_docstring_cross_references_resolve():
    broken = []
    texts = [(name, path.read_text()) for name, path in MODULES.items()]
    texts.append(("README.md", (ROOT / "README.md").read_text()))
    for name, text in texts:
        for target in _REFERENCE.findall(text):
            if not _resolves(target):
                broken.append(f"{name}: {target}")
    assert broken == []
