"""The package reads as the pipeline: stages import only downwards, private names stay in their module,
modules stay small. Read from the source with ``ast``, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbquant"
REPO = PACKAGE.parent

# bottom to top; a module may import its own stage and the stages before it
SHARED = ("errors", "options", "files", "settings", "timing", "threads", "cache")
STAGES = {"graph": 1, "quantize": 2, "data": 3, "evaluation": 4, "calibration": 5, "search": 6,
          "notebook": 7, "zoo": 7, "cli": 8, "__main__": 8, "__init__": 8}
MAX_LINES = 450
MAX_TOP_MODULES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every nbquant import in ``path``, function-level ones too."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module == "nbquant" or module.startswith("nbquant."):
                found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("nbquant")]
    return found


def rank(module: str) -> int:
    """Stage rank of an nbquant module: 0 for the shared bottom modules."""
    first = module.split(".")[1] if module.count(".") else "__init__"
    return 0 if first in SHARED else STAGES[first]


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources("nbquant"), ids=lambda p: str(p.relative_to(REPO)))
def test_stages_import_only_downwards(path):
    me = module_name(path)
    for module, names, line in imported(path):
        for target in [module] + [f"{module}.{n}" for n in names if is_module(f"{module}.{n}")]:
            if target == "nbquant":
                continue
            assert rank(target) <= rank(me), f"{path}:{line} imports {target}, a later stage than {me}"
            same_rank_other = rank(target) == rank(me) == 7 and target.split(".")[1] != me.split(".")[1]
            assert not same_rank_other, f"{path}:{line}: notebook/ and zoo/ do not import each other"


@pytest.mark.parametrize("path", sources("nbquant", "tests", "benchmarks", "scripts"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_name_crosses_a_module(path):
    for module, names, line in imported(path):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path}:{line} imports private {private} from {module}"


def test_modules_stay_small_and_the_top_level_holds_few():
    too_long = {str(p.relative_to(REPO)): n for p in sources("nbquant")
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly in nbquant/: {top}"
    stages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert set(stages) - set(SHARED) - {"cli"} == {name for name, level in STAGES.items() if level < 8}


def test_each_stage_says_what_it_takes_and_gives():
    for stage in (name for name, level in STAGES.items() if level < 8):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc.split()) > 8, f"nbquant/{stage}/__init__.py needs a docstring saying what it does"
