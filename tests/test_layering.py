"""Data flows one way: siblings (tasks, train, evaluate) never import each other, the floor below them never
imports them, the server sits on tasks and only the command imports it, nothing imports the command, and
transformers is never a run-time import."""

from __future__ import annotations

import ast
from pathlib import Path

import altclip

PACKAGE = Path(altclip.__file__).parent
SIBLINGS = ("tasks", "train", "evaluate")
SERVER = "serve"  # sits on tasks (and the floor); only the command imports it
ABOVE_THE_FLOOR = (*SIBLINGS, SERVER, "demo", "cli")


def imports() -> dict[str, set[str]]:
    """Dotted module name -> the modules it imports (absolute names), for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[name] = names
    return found


def layer(module: str) -> str:
    """The top-level part of altclip a module belongs to ("tasks", "runtime", ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_data_flows_one_way():
    problems = []
    for module, names in imports().items():
        mine = layer(module)
        for name in names:
            if name.split(".")[0] == "transformers":
                problems.append(f"{module} imports transformers")
            if not name.startswith("altclip."):
                continue
            theirs = layer(name)
            if theirs == mine:
                continue
            if theirs == "cli":
                problems.append(f"{module} imports the command")
            elif theirs == SERVER and mine != "cli":
                problems.append(f"{module} imports the server {name}")
            elif mine == SERVER and theirs in ("train", "evaluate", "demo"):
                problems.append(f"the server {module} imports {name}")
            elif mine in SIBLINGS and theirs in SIBLINGS:
                problems.append(f"{module} imports its sibling {name}")
            elif mine not in ABOVE_THE_FLOOR and theirs in ABOVE_THE_FLOOR:
                problems.append(f"{module} (the floor below) imports {name}")
    assert not problems, "\n".join(sorted(problems))


def test_the_checker_sees_imports():
    """The rule above is only as good as the import reading it rests on."""
    found = imports()
    assert "altclip.runtime" in found["altclip.embedding"]
    assert "altclip.train.loop" in found["altclip.train.phases"]
    assert "altclip.tasks.index" in found["altclip.serve.app"]
    assert {"altclip.train", "altclip.tasks", "altclip.evaluate"} <= {layer(m) and f"altclip.{layer(m)}" for m in found}
