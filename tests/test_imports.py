"""The import graph of python/identirep (helpers.import_graph) has no cycle, counting the imports
inside functions; the GPU layer (identirep.gpu) imports nothing above it; the package rebinds
no submodule's name."""
from __future__ import annotations

import importlib
import pkgutil

import identirep

from helpers import find_cycle, import_graph

#: what the GPU layer may import, besides its own modules
GPU_MAY_IMPORT = {"identirep.errors", "identirep._arrays", "identirep._bf16",
                  "identirep._build", "identirep._core", "identirep.model", "identirep.passes"}
#: the layers of docs/design.md section 4, lowest first: a module imports only modules of its
#: own layer or of layers before it ("gpu" stands for every module of identirep.gpu, "repro"
#: for every module of identirep.repro)
LAYERS = [
    ["_core"],
    ["errors", "model", "results", "moments", "_arrays", "_bf16", "_build", "progress", "_heap",
     "_token_text"],
    ["sampling", "_rules"],
    ["reference"],
    ["passes", "_cpu_pass", "gpu"],
    ["_linalg"],
    ["_model_cache", "_label_side", "_input_side", "_pair"],
    ["_backends", "measures", "_matrix", "tokens", "accumulate", "_reservoir", "_acc_state"],
    ["io", "extract", "_hf", "constructions", "baselines", "bench", "report", "plots", "demo",
     "dask", "_dask_worker", "metrics", "cli", "repro"],
    [""],
]


def layer_of(module: str) -> int:
    short = module[len("identirep."):] if module.startswith("identirep.") else ""
    for package in ("gpu", "repro"):
        short = package if short == package or short.startswith(package + ".") else short
    for i, names in enumerate(LAYERS):
        if short in names:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS (docs/design.md section 4)")


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


def test_no_submodule_name_is_rebound_by_the_package():
    # identirep.<name> is the submodule wherever a submodule has that name: a function of the
    # same name bound by __init__ would make "import identirep.<name> as m" give the function
    for info in pkgutil.iter_modules(identirep.__path__):
        module = importlib.import_module(f"identirep.{info.name}")
        assert getattr(identirep, info.name, module) is module, info.name


def test_every_import_goes_down_the_layers():
    upward = [f"{name} -> {dep}" for name, deps in import_graph().items() for dep in deps
              if layer_of(dep) > layer_of(name)]
    assert not upward, "imports that go up the layers of docs/design.md: " + ", ".join(upward)
