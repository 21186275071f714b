"""The import rule of docs/architecture.md, checked by parsing every module (no import is run).

Layers, bottom to top: common -> models -> curation -> training, testbed -> apps -> pipelines -> bench.
A module may import its own package and the layers below it; never a layer above, never another
package's `__main__` or `_private` names, and nothing but tests imports `tests`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "common": 0,
    "models": 1,
    "curation": 2,
    "training": 3,
    "testbed": 3,
    "apps": 4,
    "pipelines": 5,
    "bench": 6,
}


def package_of(module: str) -> str:
    return module.split(".")[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Every import that breaks the rule, as 'file:line: what'."""
    problems = []
    graph: dict[str, set[str]] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            here = package
            where = f"{path.relative_to(root)}"
            for line, module, names in imports_of(path):
                target = package_of(module)
                if target == "tests":
                    problems.append(f"{where}:{line}: imports tests ({module})")
                    continue
                if target not in LAYERS:
                    continue  # the standard library or a third-party package
                if target != here:
                    graph.setdefault(here, set()).add(target)
                    if LAYERS[target] > LAYERS[here] or (LAYERS[target] == LAYERS[here]):
                        problems.append(
                            f"{where}:{line}: {here} (layer {LAYERS[here]}) imports {module} (layer {LAYERS[target]})"
                        )
                    if module.endswith(".__main__") or any(n == "__main__" for n in names):
                        problems.append(f"{where}:{line}: imports another package's entry point {module}")
                    private = [n for n in names if n.startswith("_") and n != "__version__"]
                    if private or any(
                        part.startswith("_") and part != "__init__" for part in module.split(".")
                    ):
                        problems.append(
                            f"{where}:{line}: imports private names of {module}: {private or module}"
                        )
                elif module.endswith(".__main__") and module != module_name(path):
                    sub = module.rsplit(".", 1)[0]
                    if not module_name(path).startswith(sub + "."):
                        problems.append(f"{where}:{line}: imports another package's entry point {module}")

    # cycles between packages (the layer check already forbids them; this names one if it slips in)
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    problems += [f"cycle: {p} imports itself through {sorted(graph[p])}" for p in graph if reaches(p, p, {p})]
    return problems


def test_imports_only_go_down_the_layers():
    assert violations() == []


def test_apps_do_not_import_each_others_entry_points():
    """apps/X may not import apps/Y/__main__ (what apps share lives once in apps/)."""
    problems = []
    for path in sorted((ROOT / "apps").rglob("*.py")):
        mine = module_name(path).split(".")[:2]
        for line, module, names in imports_of(path):
            parts = module.split(".")
            if parts[0] == "apps" and len(parts) > 2 and parts[:2] != mine:
                if parts[-1] == "__main__" or any(n.startswith("_") for n in names):
                    problems.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
            if parts[0] == "apps" and parts[-1] == "__main__" and module != module_name(path):
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports entry point {module}")
    assert problems == []


@pytest.mark.parametrize(
    "package, source, expected",
    [
        (
            "curation",
            "from training.train import train\n",
            "curation (layer 2) imports training.train (layer 3)",
        ),
        ("common", "import models\n", "common (layer 0) imports models (layer 1)"),
        ("bench", "from tests.conftest import one_thread\n", "imports tests"),
        ("pipelines", "from curation.__main__ import main\n", "entry point curation.__main__"),
        ("apps", "from curation.build import _staged\n", "private names of curation.build"),
        (
            "training",
            "from testbed.shapes import CLASSES\n",
            "training (layer 3) imports testbed.shapes (layer 3)",
        ),
    ],
)
def test_the_checker_catches_each_kind_of_bad_import(tmp_path, package, source, expected):
    """Break the rule on purpose in a copy-sized tree: the checker must name it."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    found = violations(tmp_path)
    assert any(expected in p for p in found), found


def test_no_error_lists_left_in_entry_points():
    """One UserError base class, caught once by common.errors.run_cli: no module keeps a list of errors."""
    offenders = []
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in {".venv", "tests"}:
            continue
        text = path.read_text()
        if "USER_ERRORS" in text or "user_errors" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
