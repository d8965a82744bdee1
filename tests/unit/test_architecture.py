"""How the code is laid out, read from its syntax trees: no import cycle between the project's modules
(function-local imports count; imports only for type checking do not), each module importing only what
its layer may (ARCHITECTURE.md's code map), no class over 300 lines and no function over 60, but for the
exceptions named below, each with its reason."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "scheduler", "node", "runners", "warmfleet")
GENERATED = ROOT / "warmfleet" / "v1"  # protoc's output
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

# Declarative builders: one literal document each (an OpenAPI document, a JSON Schema), read top to
# bottom; cut into pieces they would read worse.
DECLARATIVE = {
    "gateway.rest.openapi.schemas": "the OpenAPI document's components, one literal",
    "gateway.rest.openapi.paths": "the OpenAPI document's operations, one literal",
    "runners.diffusion.runner.input_schema": "the image family's input JSON Schema, one literal",
}
# The layers of ARCHITECTURE.md's code map: a module of the first group may import only modules of the
# groups named for it (its own group included). Checked by prefix, longest first; the kernel's modules
# are named one by one, since the top floor (warmfleet.cli) and the client live in the same package.
KERNEL = ("warmfleet.domain", "warmfleet.errors", "warmfleet.settings", "warmfleet.jsonvalues",
          "warmfleet.dataplane", "warmfleet.bundle", "warmfleet.tasks", "warmfleet.cluster_state",
          "warmfleet.tls", "warmfleet.home")
LAYERS: dict[str, tuple[str, ...]] = {
    **{name: KERNEL for name in KERNEL},
    "warmfleet": (*KERNEL, "warmfleet.client"),  # the package: ``from warmfleet import Client``
    "warmfleet.v1": ("warmfleet.v1",),
    "warmfleet.client": (*KERNEL, "warmfleet.v1", "warmfleet.client"),
    "runners": (*KERNEL, "runners"),
    "node": (*KERNEL, "runners", "node"),
    # The controller's process hosts the agents' actors, so only the Ray seam names the node package.
    "scheduler": (*KERNEL, "scheduler"),
    "scheduler.ray_adapter": (*KERNEL, "scheduler", "node", "runners"),
    # The core serves both edges and names neither; server.py builds everything, so it may.
    "gateway": (*KERNEL, "warmfleet.v1", "scheduler", "runners", "gateway"),
    "gateway.grpc": (*KERNEL, "warmfleet.v1", "scheduler", "runners", "gateway"),
    "gateway.rest": (*KERNEL, "warmfleet.v1", "scheduler", "runners", "gateway"),
    "gateway.server": (*KERNEL, "warmfleet.v1", "scheduler", "runners", "gateway"),
    "warmfleet.cli": PACKAGES,  # the top floor: the CLI and the process that assembles the cluster
}
# Within gateway, the core may not reach up to an edge, and an edge may not go through another: gRPC and
# REST (and the web console, later) are siblings over the same core.
EDGES = ("gateway.grpc", "gateway.rest", "gateway.web")


@dataclass(frozen=True)
class Module:
    name: str
    tree: ast.Module


def modules() -> dict[str, Module]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(GENERATED):
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = Module(name, ast.parse(path.read_text(), str(path)))
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:``: imports for annotations, never run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def imports(module: Module, known: dict[str, Module]) -> set[str]:
    """The project's modules ``module`` imports, anywhere in it."""
    skip, targets = _type_checking_only(module.tree), set()
    for node in ast.walk(module.tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import module`` names the module; the package counts only for a name
            # defined in it
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if _within(name, "warmfleet.v1"):  # generated, not parsed: one module here
                targets.add("warmfleet.v1")
                continue
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module.name:
                targets.add(name)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def oversized() -> dict[str, int]:
    """Classes over ``MAX_CLASS_LINES`` and functions over ``MAX_FUNCTION_LINES``, by qualified name."""
    found = {}
    for module in modules().values():
        for qualified, node in _definitions(module.name, module.tree):
            lines = node.end_lineno - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                found[qualified] = lines
    return found


def _definitions(prefix: str, node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualified = f"{prefix}.{child.name}"
            yield qualified, child
            yield from _definitions(qualified, child)


def test_no_import_cycle_between_the_projects_modules():
    known = modules()
    graph = {name: imports(module, known) for name, module in known.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_and_only_that():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_class_over_300_lines_and_no_function_over_60_but_the_named_exceptions():
    allowed = DECLARATIVE
    found = oversized()
    assert {name: lines for name, lines in found.items() if name not in allowed} == {}
    assert sorted(name for name in allowed if name not in found) == [], "paid off: remove it from the list"


def _layer(name: str) -> str:
    return max((prefix for prefix in LAYERS if _within(name, prefix)), key=len)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(known: dict[str, Module]) -> list[str]:
    """``module -> import`` for each import its layer does not allow."""
    found = []
    for name, module in known.items():
        layer = _layer(name)
        for target in imports(module, known):
            allowed = any(_within(target, prefix) for prefix in LAYERS[layer])
            edge = next((e for e in EDGES if _within(target, e)), None)
            reaches_an_edge = edge is not None and layer != "gateway.server" and not _within(name, edge)
            if not allowed or reaches_an_edge:
                found.append(f"{name} -> {target}")
    return sorted(found)


def test_each_module_imports_only_what_its_layer_may():
    assert layer_violations(modules()) == []


def test_the_layer_check_sees_a_core_module_reaching_up_and_a_kernel_module_reaching_out():
    def parsed(name: str, source: str) -> Module:
        return Module(name, ast.parse(source))

    known = {m.name: m for m in (
        parsed("gateway.predictions", "from gateway.rest.shapes import x"),
        parsed("gateway.rest.shapes", "from gateway.predictions import y"),
        parsed("warmfleet.domain", "def f():\n    import scheduler.router"),
        parsed("scheduler.router", "from warmfleet.domain import z"),
        parsed("gateway.grpc.convert", "from gateway.predictions import y"),
        parsed("gateway.rest.catalog", "from gateway.grpc import convert\nfrom gateway.rest import shapes"),
        parsed("gateway.server", "from gateway.rest import shapes\nfrom gateway.grpc import convert"),
    )}
    assert layer_violations(known) == ["gateway.predictions -> gateway.rest.shapes",
                                       "gateway.rest.catalog -> gateway.grpc.convert",
                                       "warmfleet.domain -> scheduler.router"]
