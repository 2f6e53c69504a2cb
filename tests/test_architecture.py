"""The import graph has no cycles (issue 15): between modules, and between subpackages.

Every ``import`` in ``src/broaden`` counts, function-local ones included (found with ``ast``), except those
under ``if TYPE_CHECKING:``, which never run. An edge goes to the deepest module named (``from broaden.io
import pool`` → ``broaden.io.pool``; ``from broaden.io import Pool`` → ``broaden.io``). Plugins that a
registry loads by name (``broaden.select.registry.PLUGIN_MODULES``) are not imports: that is what lets
selection run LSB and Auto strategies without depending on them. The layers are in docs/architecture.md.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "broaden").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target == "broaden" or target.startswith("broaden."):
                    found = resolve(target)
                    if found and found != mod:
                        edges[mod].add(found)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = sorted(set(edges) | {b for bs in edges.values() for b in bs})

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def subpackage(mod: str) -> str:
    """``broaden.lsb.knn.build`` → ``broaden.lsb``; a top-level module is its own node."""
    return ".".join(mod.split(".")[:2])


def _explain(comp, edges, key=lambda m: m) -> str:
    members = set(comp)
    return "; ".join(f"{a} -> {b}" for a in sorted(edges) for b in sorted(edges[a])
                     if key(a) in members and key(b) in members and key(a) != key(b))


def test_the_graph_sees_function_local_imports():
    edges = import_graph()
    assert "broaden.lsb.knn.ray" in edges["broaden.lsb.pipeline"]  # imported inside _build_on
    assert "broaden.engines.ray_engine" in edges["broaden.engines"]  # imported inside get_engine


def test_no_import_cycle_between_modules():
    edges = import_graph()
    found = cycles(edges)
    assert not found, "\n".join(_explain(c, edges) for c in found)


def test_no_import_cycle_between_subpackages():
    edges = import_graph()
    packages: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            # The root façade re-exports lazily (by name, at attribute access); importing it is no layer edge.
            if subpackage(a) != subpackage(b) and b != "broaden":
                packages[subpackage(a)].add(subpackage(b))
    found = cycles(packages)
    assert not found, "\n".join(_explain(c, edges, subpackage) for c in found)


def test_layers():
    """The rules of DESIGN.md §8 / docs/architecture.md that the graph can check."""
    edges = import_graph()
    leaves = {"broaden.errors", "broaden._lazy"}  # import nothing of ours; anyone may import them
    below = {
        "broaden.io": {*leaves, "broaden._typing", "broaden.progress"},
        "broaden.topk": leaves,
        "broaden.metrics": leaves,
        "broaden.engines": {*leaves, "broaden.io", "broaden.topk", "broaden.progress"},
    }
    for leaf in leaves:
        assert not edges.get(leaf), f"{leaf} must import nothing of ours"
    for a, bs in edges.items():
        for layer, allowed in below.items():
            if subpackage(a) == layer:
                outside = {b for b in bs if subpackage(b) != layer and subpackage(b) not in allowed}
                assert not outside, f"{a} imports {sorted(outside)}; {layer} may import only {sorted(allowed)}"
        if subpackage(a) in ("broaden.select", "broaden.lsb"):
            assert not any(subpackage(b) in ("broaden.models", "broaden.rounds", "broaden.simulate") for b in bs), a
        if subpackage(a) == "broaden.models":
            assert not any(subpackage(b) in ("broaden.select", "broaden.lsb") for b in bs), a


def test_import_broaden_and_simulate_stay_light():
    code = ("import sys, broaden, broaden.simulate, broaden.select, broaden.report;"
            "heavy = [m for m in ('torch', 'faiss', 'ray', 'transformers', 'cleanlab') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent)


def test_command_functions_come_from_broaden_whatever_was_imported_first():
    code = """
import importlib, sys, types
import broaden
from broaden import clean, evaluate, select, simulate
import broaden.select.mix, broaden.models.train, broaden.models.score, broaden.select.cleaning
assert broaden.select is select and callable(select) and broaden.select.select.__module__ == "broaden.select.mix"
assert callable(broaden.lsb) and callable(broaden.report) and callable(simulate)
assert isinstance(broaden.models.train, types.ModuleType) and isinstance(broaden.models.score, types.ModuleType)
assert callable(broaden.train) and broaden.train.__module__ == "broaden.models.train"
assert broaden.clean is clean and clean.__module__ == "broaden.select.cleaning" and broaden.select.clean is clean
assert evaluate.__module__ == "broaden.evaluation"
from broaden.errors import __all__ as errors
assert all(getattr(broaden, name) is getattr(importlib.import_module("broaden.errors"), name) for name in errors)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent)


def test_broaden_select_called_as_the_command(tmp_path):
    import numpy as np

    import broaden

    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=50).astype(np.float32)
    got = broaden.select({"probs": probs}, "entropy", 5)
    assert got.equals(broaden.select.select({"probs": probs}, "entropy", 5))


def test_every_exception_type_is_exported_from_errors():
    import broaden.errors as errors

    defined = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", "").endswith(("Error", "Exception")) or getattr(b, "id", "") == "WorkspaceError"
                    for b in node.bases):
                defined.add(node.name)
    missing = sorted(defined - set(errors.__all__))
    assert not missing, f"add {missing} to broaden.errors"
    assert all(issubclass(getattr(errors, name), errors.BroadenError) for name in errors.__all__)


def _submodule_names(package_dir: Path) -> set[str]:
    return ({p.stem for p in package_dir.glob("*.py") if p.stem not in ("__init__", "__main__")}
            | {p.name for p in package_dir.iterdir() if (p / "__init__.py").is_file()})


def test_no_package_binds_a_submodule_name_to_anything_else():
    """No function shadows its module (issue 15 item 5): a package's ``__init__`` binds the name of one of its
    submodules only to that submodule — by import, ``def``, assignment or a lazy-export table (whose entry must
    be the submodule's full dotted path, which :func:`broaden._lazy.lazy_exports` resolves to the module).
    Otherwise ``broaden.models.train`` would be the module or the function depending on import order."""
    bad = []
    for init in sorted((SRC / "broaden").rglob("__init__.py")):
        package = ".".join(init.parent.relative_to(SRC).parts)
        children = _submodule_names(init.parent)
        tree = ast.parse(init.read_text(encoding="utf-8"))
        for node in tree.body:
            bound: list[tuple[str, str | None]] = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound = [(node.name, None)]
            elif isinstance(node, ast.Assign):
                bound = [(t.id, None) for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                bound = [(a.asname or a.name, f"{base}.{a.name}") for a in node.names]
            bad += [f"{package}.{name} -> {target}" for name, target in bound
                    if name in children and target != f"{package}.{name}"]
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (isinstance(key, ast.Constant) and key.value in children
                            and not (isinstance(value, ast.Constant) and value.value == f"{package}.{key.value}")):
                        bad.append(f"{package}.{key.value} -> {ast.unparse(value)} (lazy export)")
    assert not bad, "names of submodules bound to something else: " + "; ".join(sorted(set(bad)))


def test_the_shadowing_names_of_issue_15_are_gone():
    code = """
import importlib.util, types
import broaden.lsb, broaden.lsb.pipeline, broaden.select, broaden.select.cleaning, broaden.models
for gone in ("broaden.select.clean", "broaden.lsb.broaden", "broaden.lsb.search"):
    assert importlib.util.find_spec(gone) is None, gone
assert not hasattr(broaden.lsb, "broaden") and not hasattr(broaden.lsb, "search")
assert callable(broaden.select.clean) and broaden.select.clean.__module__ == "broaden.select.cleaning"
import broaden.models.train, broaden.models.score
from broaden.models import train, score
assert isinstance(train, types.ModuleType) and isinstance(score, types.ModuleType)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SRC.parent)


def test_dead_code_named_in_issue_15_is_gone():
    """``knn._pow2`` and the module-level ``lsb.search`` are gone (``KNNIndex.search`` is the one search);
    ``Ledger.get_meta``, unused when the issue was filed, stays only while something reads it."""
    texts = {mod: path.read_text(encoding="utf-8") for mod, path in _modules().items()}
    top_level = {mod: {n.name for n in ast.parse(text).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                 for mod, text in texts.items()}
    assert not [m for m, names in top_level.items() if "_pow2" in names]
    assert not [m for m, names in top_level.items() if m.startswith("broaden.lsb") and "search" in names]
    readers = [m for m, text in texts.items() if m != "broaden.rounds.ledger" and ".get_meta(" in text]
    assert readers, "Ledger.get_meta is read by nothing: remove it"


def test_every_private_top_level_function_is_used():
    """A ``_helper`` that nothing calls is dead code (how ``knn._pow2`` survived a refactor)."""
    import re

    texts = [path.read_text(encoding="utf-8") for path in _modules().values()]
    everything = "\n".join(texts)
    unused = []
    for mod, text in zip(_modules(), texts):
        for node in ast.parse(text).body:
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_")
                    and not node.name.startswith("__")
                    and len(re.findall(rf"\b{re.escape(node.name)}\b", everything)) < 2):
                unused.append(f"{mod}.{node.name}")
    assert not unused, f"unused private functions: {unused}"
