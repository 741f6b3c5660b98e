"""No import cycles inside minires: no module imports one that imports it
back, directly or through others, at module level or inside a function.

Read with ``ast`` from the source files, so a cycle hidden in a function body
(imported only when called) counts too. The one exception is Keras's own
shape: ``KerasTensor.__add__`` records an ``Add`` layer, so layers/base.py
reaches layers/merge.py, whose layers derive from base's Layer.
"""
import ast
import pathlib

import minires

PACKAGE = pathlib.Path(minires.__file__).parent
ALLOWED = {("minires.layers.base", "minires.layers.merge")}


def module_name(path):
    parts = ["minires", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name, path, known):
    """The minires modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:          # from . import kernels: a module; from .x import f: x
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {m for m in found if m in known and m != name and (name, m) not in ALLOWED}


def import_graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph):
    """Every strongly connected set of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_planted_cycle():
    graph = import_graph()
    graph["minires.backend"] = graph["minires.backend"] | {"minires.models"}
    assert any("minires.backend" in c and "minires.models" in c for c in cycles(graph))


def test_the_checker_reads_imports_inside_functions():
    graph = import_graph()
    assert "minires.io.keras_h5" in graph["minires.applications.resnet"]   # imported in a function


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []
