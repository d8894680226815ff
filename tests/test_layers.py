"""The layers of DESIGN.md section 5, checked by walking every import of the source tree.

    core < agent | replay | wire < safety < runtime < cli        robots/ beside, on core only

A module may import only its own layer and the layers below it; the model code never
imports ZeroMQ or Ray; Ray is imported in one module (daydream/replay/remote.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the daydream layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "agent": {"core"},
    "replay": {"core"},
    "wire": {"core"},
    "safety": {"core", "wire"},
    "runtime": {"core", "agent", "replay", "wire", "safety"},
    "cli": {"core", "agent", "replay", "wire", "safety", "runtime"},
}
# third-party packages a layer must never import
FORBIDDEN = {
    "core": {"torch", "zmq", "ray"},
    "agent": {"zmq", "ray"},
    "replay": {"torch", "zmq"},
    "wire": {"torch", "ray"},
    "safety": {"torch", "ray"},
    "robots": {"torch", "zmq", "ray"},
}
RAY_MODULES = {"daydream/replay/remote.py"}
# robot drivers may use the core's spaces and nothing else of daydream
ROBOTS_MAY_IMPORT = {"daydream.core.spaces"}


def imports_of(source: str) -> list[tuple[str, int]]:
    """Every module an import statement names (``from a.b import c`` -> a.b), with its line."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.module, node.lineno))
            if node.module == "daydream":  # from daydream import core
                names += [(f"daydream.{alias.name}", node.lineno) for alias in node.names]
    return names


def layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if parts[0] == "robots":
        return "robots"
    return parts[1] if len(parts) > 2 else "top"


def violations(path: Path, source: str) -> list[str]:
    """What is wrong with one file's imports (empty: nothing)."""
    rel = path.relative_to(ROOT).as_posix()
    layer = layer_of(path)
    found = []
    for name, line in imports_of(source):
        top = name.split(".")[0]
        where = f"{rel}:{line} imports {name}"
        if top in FORBIDDEN.get(layer, ()):
            found.append(f"{where}: the {layer} layer must not import {top}")
        if top == "ray" and rel not in RAY_MODULES:
            found.append(f"{where}: only {', '.join(sorted(RAY_MODULES))} imports Ray")
        if layer == "robots" and top == "daydream" and name not in ROBOTS_MAY_IMPORT:
            found.append(f"{where}: robots/ imports only {', '.join(ROBOTS_MAY_IMPORT)}")
        if layer in ALLOWED and top == "daydream" and name != "daydream":
            target = name.split(".")[1]
            if target != layer and target not in ALLOWED[layer]:
                found.append(f"{where}: {layer} sits below {target} and must not import it")
    return found


def sources() -> list[Path]:
    return sorted([*(ROOT / "daydream").rglob("*.py"), *(ROOT / "robots").rglob("*.py")])


def test_every_module_belongs_to_a_layer():
    strays = [p for p in sources() if layer_of(p) not in {*ALLOWED, "robots", "top"}]
    assert not strays, f"modules outside the layer packages: {strays}"
    top = {p.name for p in (ROOT / "daydream").glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, f"daydream/ holds only the layer packages: {top}"


def test_no_layer_imports_a_higher_one_and_model_code_imports_neither_zmq_nor_ray():
    found = [v for p in sources() for v in violations(p, p.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "path, line, why",
    [
        ("daydream/agent/rssm.py", "import zmq", "agent layer must not import zmq"),
        ("daydream/agent/agent.py", "from daydream.runtime import learner", "agent sits below"),
        ("daydream/core/spaces.py", "import torch", "core layer must not import torch"),
        ("daydream/wire/gateway.py", "import ray", "only daydream/replay/remote.py imports Ray"),
        ("daydream/wire/codec.py", "from daydream.safety import supervisor", "wire sits below"),
        ("daydream/replay/store.py", "from daydream.agent.agent import Agent", "replay sits below"),
        ("robots/ur5.py", "from daydream.runtime import learner", "robots/ imports only"),
    ],
)
def test_the_check_fails_when_a_forbidden_import_is_added(path, line, why):
    file = ROOT / path
    assert not violations(file, file.read_text())
    found = violations(file, file.read_text() + f"\n{line}\n")
    assert any(why in v for v in found), found
