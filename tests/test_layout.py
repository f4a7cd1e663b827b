"""The layout of occsynth and occsynth_train, checked statically (ast, nothing imported):

* the import graph between their modules has no cycle (module-level and function-level
  imports both count as edges);
* a function imports a project module only when that module pulls in an optional heavy
  dependency (LAZY_PROJECT), and third-party modules only when optional or slow to import for
  a rarely used path (LOCAL_IMPORT_ALLOWED);
* each registry (`_registry.py`) is a leaf that lists, as data, exactly the modules that
  register entries in it;
* files are written through occsynth.io.atomic (the few writers with their own atomic
  publication are named in OWN_ATOMIC_WRITERS).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "occsynth", ROOT / "occsynth_train")
# third-party modules a function may import: optional, or slow to import for a rarely used path
LOCAL_IMPORT_ALLOWED = (
    "matplotlib",
    "torch.utils.tensorboard",  # plots and logs of a run
    "torch",  # builds from stored landmarks never import it
    "facenet_pytorch",
    "torchvision",  # MTCNN, only when detection runs
    "pyrender",
    "ray",
    "pyarrow",  # optional extras / authoring only
    "onnxruntime",  # occsynth[onnx]: only when an .onnx model is scored (occsynth_train/eval/models.py)
    "skimage.data",  # the embedded demo images' location
)
# project modules a function may import, because importing them pulls in an optional heavy dependency
LAZY_PROJECT = {
    "occsynth.authoring.masks": "trimesh + pyrender (mask3d mode=direct, render-masks)",
    "occsynth.authoring.objects": "trimesh + pyrender (make-templates)",
    "occsynth.faces._torchvision_compat": "torch + facenet-pytorch (detection)",
}
REGISTRIES = {  # registry module -> the names its entries register with (NAME.register or a decorator)
    "occsynth_train.models.backbones._registry": ("BACKBONES",),
    "occsynth_train.models._registry": ("HEADS",),
    "occsynth_train.methods._registry": ("METHODS",),
    "occsynth.occluders._registry": ("OCCLUDERS", "register_occluder"),
    "occsynth.sources._registry": ("SOURCES",),
    "occsynth.benchmarks._registry": ("BUILDERS", "register_builder"),
}
# modules that publish files atomically by themselves (and why)
OWN_ATOMIC_WRITERS = {
    "occsynth/io/atomic.py": "the helper itself",
    "occsynth/io/tar.py": "the shard writer streams to a temporary name, fsyncs and renames",
    "occsynth/io/export.py": "a staged folder (io.atomic.temp_path) renamed whole on success",
    "occsynth/sources/fetch.py": "resumable downloads grow a .part file, renamed once verified",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (resolved, absolute)
    line: int
    local: bool  # inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted(package.rglob("*.py"))}


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function (at any depth)."""
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return inside


def imports_of(name: str) -> list[Import]:
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    local = _function_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, alias.name, node.lineno, id(node) in local))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"  # `from pkg import module` imports the module
                found.append(Import(name, sub if sub in MODULES else target, node.lineno, id(node) in local))
    return found


ALL_IMPORTS = [imp for name in MODULES for imp in imports_of(name)]


def _top(target: str) -> str:
    return target.split(".")[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_is_read():
    graph = {}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES:
            graph.setdefault(imp.source, set()).add(imp.target)
    # sanity: the graph sees relative imports, package imports and `from . import module`
    assert "occsynth_train.data.stream" in graph["occsynth_train.engine.trainer"]
    assert "occsynth_train.models" in graph["occsynth_train.methods.base"]
    assert "occsynth_train.methods._registry" in graph["occsynth_train.methods.baseline"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _parents(module: str) -> list[str]:
    """The packages whose __init__ runs before `module` (the root package excepted: its __init__
    only re-exports and is checked by the graph itself)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in MODULES]


def test_no_import_cycle():
    """Importing a.b.c runs a/b/__init__ first, so an edge to a.b.c is also an edge to a.b: a
    cycle through a package __init__ ("partially initialized module") is a cycle here too."""
    graph: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES:
            for target in [imp.target, *_parents(imp.target)]:
                if target != imp.source and not imp.source.startswith(target + "."):
                    graph.setdefault(imp.source, set()).add(target)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_function_local_imports_of_the_project():
    offenders = [
        f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.local and _top(i.target) in ("occsynth", "occsynth_train") and i.target not in LAZY_PROJECT
    ]
    assert offenders == []


def test_function_local_imports_are_optional_dependencies_only():
    offenders = [
        f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.local
        and _top(i.target) not in ("occsynth", "occsynth_train")
        and not any(i.target == a or i.target.startswith(a + ".") for a in LOCAL_IMPORT_ALLOWED)
    ]
    assert offenders == []


def _listed_modules(registry: str) -> tuple[set[str], set[str]]:
    """(modules listed in the registry's `modules=`, everything the registry module imports)."""
    tree = ast.parse(MODULES[registry].read_text())
    listed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "modules":
            listed = {elt.value for elt in node.value.elts}
    return listed, {i.target for i in imports_of(registry)}


def _registering_modules(names: tuple[str, ...]) -> set[str]:
    """Modules with a `@NAME.register(...)` decorator, or one of the `names` used as a decorator."""
    found = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                for deco in node.decorator_list:
                    func = deco.func if isinstance(deco, ast.Call) else deco
                    if (
                        isinstance(func, ast.Attribute)
                        and func.attr == "register"
                        and isinstance(func.value, ast.Name)
                        and func.value.id in names
                    ):
                        found.add(module)
                    elif isinstance(func, ast.Name) and func.id in names:
                        found.add(module)
    return found


@pytest.mark.parametrize("registry", sorted(REGISTRIES))
def test_registries_are_leaves_listing_their_modules(registry):
    listed, imported = _listed_modules(registry)
    assert imported == {"occsynth.registry"}
    assert listed and listed == _registering_modules(REGISTRIES[registry])


def _write_calls(path: Path) -> list[str]:
    """Calls that write a file other than through occsynth.io.atomic (appends are fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = ast.unparse(func)
        if isinstance(func, ast.Attribute) and func.attr in ("write_text", "write_bytes"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
        elif name in ("os.replace", "os.rename", "shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.move"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
        elif name == "open":
            mode = (
                node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            )
            if isinstance(mode, ast.Constant) and ("w" in mode.value or "x" in mode.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} open(..., {mode.value!r})")
    return found


def test_files_are_written_through_occsynth_io_atomic():
    calls = [
        call
        for path in MODULES.values()
        if str(path.relative_to(ROOT)) not in OWN_ATOMIC_WRITERS
        for call in _write_calls(path)
    ]
    assert calls == []
