"""The layers hold: the engine imports no gRPC, no protobuf, no generated code and
nothing of the server; the generated code imports only protobuf, gRPC and itself; the
server's modules import one another without circles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def imports(path: Path, package: str) -> set[str]:
    """The modules a file imports, relative imports resolved against `package`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    found.update(f"{module}.{alias.name}" for alias in node.names)
                    continue
            else:
                module = node.module or ""
            found.add(module)
    return found


def test_the_engine_imports_no_grpc_protobuf_generated_code_or_server() -> None:
    engine = [p for p in (SRC / "assigncore").glob("*.py")]
    assert len(engine) > 10
    for path in engine:
        for module in imports(path, "assigncore"):
            assert not module.startswith(
                ("grpc", "google", "assigncore.v1", "assigncore_server")
            ), (
                path.name,
                module,
            )


def test_the_generated_code_imports_only_protobuf_grpc_and_itself() -> None:
    for path in (SRC / "assigncore" / "v1").glob("*.py"):
        for module in imports(path, "assigncore.v1"):
            top = module.split(".")[0]
            assert top in {"grpc", "google", "assigncore", "__future__", "warnings"}, (
                path.name,
                module,
            )
            assert top != "assigncore" or module.startswith("assigncore.v1"), (path.name, module)


def test_the_client_imports_the_generated_code_never_the_server_or_the_engine() -> None:
    """A console built on assigncore.client needs grpc, protobuf and assigncore.v1 only."""
    files = list((SRC / "client").glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for module in imports(path, "assigncore.client"):
            top = module.split(".")[0]
            assert not module.startswith("assigncore_server"), (path.name, module)
            if top == "assigncore":
                assert module.startswith(("assigncore.v1", "assigncore.client")), (
                    path.name,
                    module,
                )
            assert top not in {"numpy", "sortedcontainers", "psycopg"}, (path.name, module)


def test_the_servers_modules_import_one_another_without_circles() -> None:
    root = SRC / "server"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        package = ".".join(("assigncore_server", *parts[:-1]))
        name = ".".join(("assigncore_server", *parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        runtime_only = set()
        for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` are not circles
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                for inner in ast.walk(node):
                    runtime_only.add(id(inner))
        found = set()
        for node in ast.walk(tree):
            if id(node) in runtime_only or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            found.update(targets)
        graph[name] = found
    modules = set(graph)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt in modules and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(m for m in modules if m in reach(m))
    assert not circles, circles
