"""The layers depend downward only (DESIGN §3; issue 13): no import circle crosses a package.

Run-time imports are read from the source (module level and lazy ones inside functions);
imports under `if TYPE_CHECKING:` are left out: they name the types of back-references
(a VM's `host`) and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vpmu_core"

#: the intended order, bottom first: a unit may import only units before it (or itself)
LAYERS = [
    {"errors", "events", "logs", "seeds", "markers", "lazy"},
    {"ledgers", "costs", "cost_fields"},
    {"hw"},
    {"perf"},
    {"engine"},
    {"hv"},
    {"metrics"},
    {"hookspecs"},
    {"plugins"},
    {"host", "api", "__init__"},
    {"scenario"},
    {"cli", "testing"},
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpmu_core"):
            if node.module == "vpmu_core":  # `from vpmu_core import hookspecs`
                out.update(f"vpmu_core.{a.name}" for a in node.names)
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vpmu_core"))
    return out


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        src = _unit(".".join(rel.parts))
        for mod in _runtime_imports(path):
            dst = _unit(mod)
            if dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_imports_go_down_the_layers_only():
    rank = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    upward = sorted(
        (src, dst) for src, dsts in _edges().items() for dst in dsts if rank.get(dst, -1) > rank.get(src, -1)
    )
    assert upward == [], f"upward imports (unit -> unit): {upward}"


def test_no_import_circle_between_units():
    edges = _edges()
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        seen[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if seen.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in seen and (cycle := visit(v)):
                return cycle
        seen[u] = 2
        stack.pop()
        return None

    for u in sorted(edges):
        if u not in seen:
            assert (cycle := visit(u)) is None, " -> ".join(cycle)


def _private_reach_ins(path: Path) -> list[str]:
    """`obj._name` where obj is not the module's own `self`/`cls` (dunders aside)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_metrics_reads_snapshots_not_private_state():
    """The report reads the snapshot each layer contributes (`VM.snapshot()`,
    `perf.snapshot.snapshot_event`), never another package's private attributes."""
    found = [hit for path in sorted((ROOT / "metrics").rglob("*.py")) for hit in _private_reach_ins(path)]
    assert found == []


def test_the_reach_in_check_sees_one(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f(vm, self):\n    return vm._guest_perf, self._ok, vm.__class__\n")
    assert _private_reach_ins(bad) == ["x.py:2: vm._guest_perf"]
