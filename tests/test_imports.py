"""The import graph of python/identirep has no cycle, counting the imports inside functions, and
the GPU layer (identirep.gpu) imports nothing above it. Read from the sources with ast: what a
module imports wherever in it, resolved to identirep modules (``from . import x`` is an import of
the submodule x; ``from .m import name`` of m; the compiled core is identirep._core)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "identirep"
#: modules of the package that are not Python sources
COMPILED = {"identirep._core"}
#: what the GPU layer may import, besides its own modules
GPU_MAY_IMPORT = {"identirep.errors", "identirep._arrays", "identirep._bf16",
                  "identirep._build", "identirep._core", "identirep.model", "identirep.passes"}


def module_names():
    """{dotted name: source file} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("identirep",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name, path, modules):
    """The identirep modules that module ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    known = set(modules) | COMPILED

    def resolve(target):
        while target not in known and "." in target:   # an attribute of a module
            target = target.rsplit(".", 1)[0]
        return target

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "identirep"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "identirep":
                continue
            for a in node.names:   # a submodule imported by name, else a name of target
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else resolve(target))
    return out - {name}


def import_graph():
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle of the graph as a list of modules (its first one again at the end), or []."""
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state:
                cycle = visit(v)
                if cycle:
                    return cycle
        stack.pop()
        state[u] = "done"
        return []

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            if cycle:
                return cycle
    return []


def test_the_graph_is_read_from_every_kind_of_import():
    graph = import_graph()
    assert "identirep.gpu.cuda_backend" in graph["identirep.measures"]   # inside a function
    assert "identirep._core" in graph["identirep._build"]                  # from . import _core
    assert "identirep.gpu.arrays" in graph["identirep.gpu.cupy_backend"]   # from .arrays import
    assert "identirep.gpu.cublas" in graph["identirep._linalg"]            # from .gpu import x
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_gpu_layer_imports_nothing_above_it():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("identirep.gpu"):
            above = {d for d in deps if not d.startswith("identirep.gpu")} - GPU_MAY_IMPORT
            assert not above, f"{name} imports {sorted(above)}"
