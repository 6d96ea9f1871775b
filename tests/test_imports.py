"""The package's import graph: no cycles, and nothing imports the training command.

The graph is read from the source (every ``import`` and ``from ... import`` of a tdsa_fast
module, at module level or inside a function, since a deferred import is still a
dependency). ``from tdsa_fast.pkg import name`` depends on ``tdsa_fast.pkg.name`` when that is
a module, else on ``tdsa_fast.pkg`` (a name its ``__init__`` defines).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tdsa_fast"
COMMANDS = ("tdsa_fast.train",)  # entry points: python -m ...; nothing may import them
COMPILED = ("tdsa_fast._C",)  # the extension csrc/ builds: a leaf
# Empty: any import cycle, and any module that imports a command, fails the tests.
KNOWN_CYCLES: list[list[str]] = []
KNOWN_COMMAND_IMPORTERS: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the tdsa_fast modules it imports}."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    deps.add(sub if sub in modules or sub in COMPILED else source)
        graph[name] = {d for d in deps if (d in modules or d in COMPILED) and d != name}
    graph.update({name: set() for name in COMPILED})
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "tdsa_fast.functional" in graph["tdsa_fast.nn"]
    assert "tdsa_fast.models" in graph["tdsa_fast.objective"]


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_but_the_known_ones():
    found = cycles(import_graph())
    assert found == KNOWN_CYCLES, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_imports_the_training_command_but_the_known_modules():
    importers = {m for m, deps in import_graph().items() if deps & set(COMMANDS)}
    assert importers == KNOWN_COMMAND_IMPORTERS, f"modules that import a command: {sorted(importers)}"


def test_the_loss_table_agrees_with_the_baselines_and_the_objective():
    """One table of losses: its baselines are tdsa_fast.losses's, and the objective builds the
    term each entry describes."""
    from tdsa_fast.loss_specs import LOSSES
    from tdsa_fast.losses import BASELINES
    from tdsa_fast.nn import MCLoss, TDSALoss
    from tdsa_fast.objective import TrainingObjective

    assert {n for n, s in LOSSES.items() if s.baseline} == set(BASELINES)
    for name, spec in LOSSES.items():
        objective = TrainingObjective(name, num_classes=3, embedding_dim=8)
        assert (objective.baseline is not None) == spec.baseline, name
        if spec.has_middle:
            assert isinstance(objective.term, TDSALoss) and objective.term.attention == spec.gate, name
        elif spec.grouped:
            assert isinstance(objective.term, MCLoss), name
        else:
            assert objective.term is None, name
