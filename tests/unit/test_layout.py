"""The package tree is the architecture: import rules between role packages, read from the AST.

Every ``import`` and ``from ... import`` in ``tykworker/`` counts, at module level or inside a
function (a lazy import still runs in that process), except under ``if TYPE_CHECKING:``
(annotations only, never executed). Rules:

* ``supervisor/`` never imports ``front/``, ``worker/``, ``cli/`` or grpc (the supervisor forks;
  grpcio does not survive ``fork``), nor anything that could pull plugin code in (design
  invariant 1);
* ``front/`` never imports ``worker/`` (the front never runs plugin code: invariant 2);
* ``front/h2/`` never imports asyncio or socket (sans-IO);
* ``front/router.py`` imports no generated protobuf module and does no I/O, and
  ``front/deadlines.py`` no I/O either;
* ``wire/`` and ``system/`` import no role package; ``wire/`` no asyncio or socket;
* shared modules (``config``, ``errors``, ``logs``, ``store``, ``tracing``) import no role
  package;
* ``worker/`` never imports ``front/``, ``supervisor/`` or ``cli/``;
* ``testing/`` (the plugin authors' test kit) runs in the test process, like ``cli/``: it
  never imports ``front/`` or ``supervisor/`` (a real server is a child process), and no
  other package imports it (the server never carries test code).

Only ``front/grpcio.py``, ``cli/call.py`` and ``testing/server.py`` import grpc.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tykworker"
ROLES = ("supervisor", "front", "worker", "cli", "testing")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against
    ``package``, by default the package ``path`` is in)."""
    tree = ast.parse(path.read_text(), str(path))
    package = package or package_of(path)
    found: set[str] = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # ``from tykworker.front import core`` imports the submodule too
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only,
    never executed)."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPE_CHECKING:
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


_TYPE_CHECKING = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def sources() -> dict[str, set[str]]:
    return {
        module_name(p): imports_of(p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if "_proto" not in p.parts
    }


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(forbidden: dict[str, tuple[str, ...]]) -> list[str]:
    found = []
    for module, imported in sources().items():
        for owner, banned in forbidden.items():
            if not under(module, owner):
                continue
            for name in sorted(imported):
                if any(under(name, b) for b in banned):
                    found.append(f"{module} imports {name}")
    return found


ROLE_PACKAGES = tuple(f"tykworker.{r}" for r in ROLES)
RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "supervisor never imports front, worker, cli or grpc": {
        "tykworker.supervisor": (
            "tykworker.front",
            "tykworker.worker",
            "tykworker.cli",
            "grpc",
        ),
    },
    "front never imports worker or cli": {
        "tykworker.front": ("tykworker.worker", "tykworker.cli", "tykworker.supervisor"),
    },
    "front/h2 is sans-IO": {"tykworker.front.h2": ("asyncio", "socket", "selectors", "uvloop")},
    "wire imports no role package and does no I/O": {
        "tykworker.wire": (*ROLE_PACKAGES, "tykworker.system", "asyncio", "socket"),
    },
    "system imports no role package": {"tykworker.system": (*ROLE_PACKAGES, "tykworker.wire")},
    "worker never imports front, supervisor or cli": {
        "tykworker.worker": ("tykworker.front", "tykworker.supervisor", "tykworker.cli"),
    },
    "testing runs in the test process: never front or supervisor": {
        "tykworker.testing": ("tykworker.front", "tykworker.supervisor"),
    },
    "only testing imports testing": {
        "tykworker.supervisor": ("tykworker.testing",),
        "tykworker.front": ("tykworker.testing",),
        "tykworker.worker": ("tykworker.testing",),
        "tykworker.cli": ("tykworker.testing",),
    },
    "the router is pure: no protobuf, no I/O": {
        "tykworker.front.router": (
            "tykworker._proto",
            "tykworker.wire.answers",
            "google.protobuf",
            "asyncio",
            "socket",
        ),
    },
    "the deadline set is pure: no I/O": {
        "tykworker.front.deadlines": ("asyncio", "socket", "uvloop", "tykworker.wire"),
    },
    "shared modules import no role package": {
        "tykworker.config": ROLE_PACKAGES,
        "tykworker.errors": ROLE_PACKAGES,
        "tykworker.logs": ROLE_PACKAGES,
        "tykworker.store": ROLE_PACKAGES,
        "tykworker.tracing": ROLE_PACKAGES,
    },
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule: str) -> None:
    assert violations(RULES[rule]) == []


def test_only_three_modules_import_grpc() -> None:
    users = {m for m, imported in sources().items() if any(under(n, "grpc") for n in imported)}
    assert users == {"tykworker.front.grpcio", "tykworker.cli.call", "tykworker.testing.server"}


def test_rules_see_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative import both count."""
    source = PACKAGE / "cli" / "commands.py"
    assert "tykworker.front.core" in imports_of(source)  # lazy, inside the front's child
    sample = tmp_path / "tykworker" / "front" / "h2" / "x.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import socket\n"
        "def f():\n    from ..core import Front\n    import asyncio\n"
    )
    found = imports_of(sample, "tykworker.front.h2")
    assert {"tykworker.front.core", "tykworker.front.core.Front", "asyncio"} <= found
    assert "socket" not in found
