"""The package's import graph: no cycles, every module importable on its own, and config loading
free of the storage clients (a cycle config → storage/cold → storage/s3 → config existed, and
only the order modules happened to be imported in kept it from failing)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import backup_agent

PACKAGE = Path(backup_agent.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Agent modules `name` imports when run, at the top or inside functions (a function-level
    import is still a cycle, only a later one); `if TYPE_CHECKING:` blocks never run."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                deps.add(full if full in known else base)
    return (deps & known) - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    assert "backup_agent.storage.classes" in graph["backup_agent.config_schema"]  # the graph sees imports
    assert cycles(graph) == []


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    def load(name: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return name, subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)

    with ThreadPoolExecutor(2) as pool:
        runnable = [m for m in modules() if not m.endswith("__main__")]  # that one runs the CLI
        failed = {name: proc.stderr.strip().splitlines()[-1] for name, proc in pool.map(load, runnable)
                  if proc.returncode != 0}
    assert failed == {}


def test_loading_the_config_imports_no_storage_client_and_no_job_runner() -> None:
    code = ("import sys, backup_agent.config, backup_agent.jobs.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3', 'awscrt') "
            "or m in ('backup_agent.jobs.base', 'backup_agent.storage.s3', 'backup_agent.storage.cold')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_a_files_job_loads_without_numpy_http_client_or_boto() -> None:
    """A rerun that finds little changed is mostly start-up: numpy (100 ms) comes only when a big
    file is cut, http.client (ssl, email: 25 ms) only when storage.endpoints are probed, botocore
    only as a fallback store."""
    code = ("import sys, backup_agent.cli, backup_agent.jobs.files, backup_agent.storage.open, "
            "backup_agent.storage.s3_crt, backup_agent.storage.endpoints; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'http', 'botocore', 'boto3')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
