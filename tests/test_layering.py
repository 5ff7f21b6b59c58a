"""Data flows one way, floor by floor: a part of altclip imports only parts on the floors below it, never a
sibling on its own floor, never the command; transformers is never a run-time import. Inside ``modeling`` the
same holds between its modules (a layer never imports the model that uses it)."""

from __future__ import annotations

import ast
from pathlib import Path

import altclip

PACKAGE = Path(altclip.__file__).parent
# bottom first; a part is a top-level package or module of altclip
FLOORS = (
    ("errors",),
    ("files", "tables", "hub"),
    ("modeling", "processing"),
    ("runtime", "data", "explain"),
    ("embedder",),
    ("search", "evaluate", "train", "tasks"),
    ("serve", "demo"),
    ("cli",),
)
COMPATIBILITY = ("tasks",)  # old import paths kept for one release: nothing inside altclip imports them
MODELING = (("config", "outputs", "weights", "quantize", "lora"), ("layers",), ("text", "vision"), ("models",))


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
                if node.module == "altclip":  # from altclip import files: a part, named like a module
                    names.update(f"altclip.{alias.name}" for alias in node.names)
        found[name] = names
    return found


def part(module: str, depth: int = 1) -> str:
    """The part of altclip a dotted module name belongs to ("modeling", "cli", ...); "" for altclip itself."""
    parts = module.split(".")
    return parts[depth] if len(parts) > depth else ""


def floor(name: str, floors: tuple[tuple[str, ...], ...]) -> int:
    for level, names in enumerate(floors):
        if name in names:
            return level
    raise AssertionError(f"{name} is on no floor: add it to the test's floors")


def test_every_part_has_a_floor():
    for module in imports():
        if part(module):
            floor(part(module), FLOORS)


def test_data_flows_one_way():
    problems = []
    for module, names in imports().items():
        mine = part(module)
        for name in names:
            if name.split(".")[0] == "transformers":
                problems.append(f"{module} imports transformers")
            if not name.startswith("altclip.") or not mine:
                continue
            theirs = part(name)
            if theirs == mine:
                continue
            if theirs in COMPATIBILITY:
                problems.append(f"{module} imports {name}, an old path kept only for users")
            elif floor(theirs, FLOORS) >= floor(mine, FLOORS):
                problems.append(f"{module} imports {name}, which is not on a floor below it")
    assert not problems, "\n".join(sorted(problems))


def test_modeling_flows_one_way():
    problems = []
    for module, names in imports().items():
        if part(module) != "modeling" or not part(module, 2):
            continue
        mine = part(module, 2)
        for name in names:
            if part(name) == "modeling" and part(name, 2) and part(name, 2) != mine:
                theirs = part(name, 2)
                if floor(theirs, MODELING) >= floor(mine, MODELING):
                    problems.append(f"{module} imports {name}")
    assert not problems, "\n".join(sorted(problems))


def test_the_checker_sees_imports():
    """The rules above are only as good as the import reading they rest on."""
    found = imports()
    assert "altclip.runtime.loading" in found["altclip.embedder"]
    assert "altclip.train.loop" in found["altclip.train.phases"]
    assert "altclip.search.index" in found["altclip.serve.routes"]
    assert "altclip.modeling.layers" in found["altclip.modeling.text"]
    assert floor("cli", FLOORS) > floor("serve", FLOORS) > floor("search", FLOORS) > floor("modeling", FLOORS)


def test_loose_modules_are_few():
    """The tree reads as the architecture: concerns are packages, and only a handful of modules stand alone."""
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(loose) <= 6, loose


def test_every_package_says_what_it_holds():
    """A real package (never a namespace one, which an installed wheel would leave out), with a docstring."""
    for folder in sorted({p.parent for p in PACKAGE.rglob("*.py")}):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"
