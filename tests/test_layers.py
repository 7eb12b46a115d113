"""The house rule for imports: the layer diagram is the folder tree, and imports point down only.

Every module under ``src/diffusio`` is parsed (imports inside functions count too; ``if TYPE_CHECKING:`` blocks do
not). An import from a higher layer, from a sibling application package, or an import cycle fails the test and
names the offending import. Order, bottom to top (``io.py`` is usable from anywhere and imports nothing of ours):

    data < core < nets < models < samplers < training < families < applications < app < the package's __init__

The applications (guidance, inverse, metrics, analysis, scaling, compress, finetune) build on the layers below and
never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "diffusio"

LAYERS = ["data", "core", "nets", "models", "samplers", "training", "families", "applications", "app"]
APPLICATIONS = {"guidance", "inverse", "metrics", "analysis", "scaling", "compress", "finetune"}
TOP = len(LAYERS)  # diffusio/__init__.py and __main__.py


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(mod: str) -> str:
    """The folder a module belongs to: ``diffusio.samplers.dpm`` -> ``samplers``; top-level files name themselves."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(mod: str) -> int:
    u = unit(mod)
    if u in ("__init__", "__main__"):
        return TOP
    if u == "io":
        return -1
    if u in APPLICATIONS:
        return LAYERS.index("applications")
    if u not in LAYERS:
        raise AssertionError(f"{mod}: module outside the layered folders; put it in one of {LAYERS} (see DESIGN)")
    return LAYERS.index(u)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported diffusio module) for every import in the file, resolved to a known module."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names if a.name.split(".")[0] == "diffusio")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "diffusio":
                    continue
                for a in child.names:  # `from pkg import submodule` names the submodule
                    sub = f"{target}.{a.name}"
                    out.append((child.lineno, sub if sub in known else target))
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return out


FILES = sorted(PKG.rglob("*.py"))
KNOWN = {module_name(f) for f in FILES}
GRAPH = {module_name(f): imports(f, KNOWN) for f in FILES}


def _violation(src: str, dst: str) -> str | None:
    if dst == src or (dst == "diffusio" and unit(src) in ("__init__", "__main__")):
        return None
    us, ud = unit(src), unit(dst)
    if ud == "io":
        return None
    if us == "io":
        return "io.py imports nothing of diffusio"
    if dst == "diffusio":
        return "imports the package root (re-exports live at the top; import the defining module)"
    if us == ud:
        return None
    ls, ld = layer(src), layer(dst)
    if ld > ls:
        return f"points up: {us} (layer {LAYERS[ls] if ls < TOP else 'root'}) -> {ud} (layer {LAYERS[ld]})"
    if ld == ls and us in APPLICATIONS:
        return f"application {us} imports application {ud}; move the shared piece down a layer"
    return None


def test_every_module_is_in_a_layer():
    for mod in KNOWN:
        layer(mod)


@pytest.mark.parametrize("mod", sorted(KNOWN))
def test_imports_point_down(mod):
    bad = []
    for line, dst in GRAPH[mod]:
        why = _violation(mod, dst)
        if why:
            bad.append(f"{mod}:{line} imports {dst}: {why}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {m: sorted({d for _, d in GRAPH[m] if d in KNOWN and d != m}) for m in KNOWN}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    msgs = []
    for comp in sccs:
        inner = [f"{a} -> {b}" for a in comp for b in edges[a] if b in comp]
        msgs.append("cycle: " + "; ".join(inner))
    assert not sccs, "\n".join(msgs)


def test_the_rule_catches_an_upward_edge():
    assert _violation("diffusio.samplers.ode", "diffusio.families.flowmap")
    assert _violation("diffusio.data.gmm", "diffusio.models.base")
    assert _violation("diffusio.inverse.smc", "diffusio.guidance.wrappers")
    assert _violation("diffusio.models.base", "diffusio")
    assert _violation("diffusio.samplers.ode", "diffusio.core.paths") is None
