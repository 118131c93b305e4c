"""The import graph flows one way: data <- (models, checkpoints, metrics) <- train <- eval <- quickstart / cli,
and data <- (models, export) <- serve <- cli.

Each top-level package is imported in a fresh interpreter and the other openeva packages it pulled in are
checked; a static pass over every module (function-level imports included) checks the same rules, so a cycle
cannot be dodged by importing inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import openeva

SRC = Path(openeva.__file__).parent
# package -> openeva packages it must never import
FORBIDDEN = {
    "data": {"train", "eval", "quickstart", "cli", "serve"},
    "models": {"train", "eval", "quickstart", "cli"},
    "layers": {"train", "eval", "quickstart", "cli", "data"},
    "losses": {"train", "eval", "quickstart", "cli", "data"},
    "checkpoints": {"train", "eval", "quickstart", "cli", "data"},
    "metrics": {"train", "eval", "quickstart", "cli", "data"},
    "train": {"eval", "quickstart", "cli"},
    "eval": {"quickstart", "cli", "serve"},
    "export": {"train", "eval", "quickstart", "cli", "serve"},
    "dense": {"train", "eval", "quickstart", "cli", "serve"},
    "serve": {"train", "eval", "quickstart", "cli"},
}


def _top_level(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "openeva" and len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_fresh_import_pulls_in_no_higher_package(package):
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('openeva.')})))")

    def pulled_by(module: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=300,
                             check=True).stdout
        return set(json.loads(out.strip().splitlines()[-1]))

    # `import openeva` (the create_model API: factory, models, checkpoints, data.transforms) runs before any
    # subpackage; the rule is about what the package itself adds
    pulled = pulled_by(f"openeva.{package}") - pulled_by("openeva")
    assert not pulled & FORBIDDEN[package], f"import openeva.{package} pulled in {sorted(pulled & FORBIDDEN[package])}"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_module_imports_against_the_flow_even_inside_functions():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        files = [SRC / f"{package}.py"] if (SRC / f"{package}.py").is_file() else sorted((SRC / package).rglob("*.py"))
        for path in files:
            for module in _imports(path):
                if _top_level(module) in forbidden:
                    wrong.append(f"{path.relative_to(SRC)} imports {module}")
    assert not wrong, "\n".join(wrong)
