"""The import graph flows one way: runtime <- layers <- models <- checkpoints <- factory <- train <- configs /
eval <- quickstart / cli, and data / evaluators <- serve <- cli.

``runtime`` imports nothing of openeva; ``models/`` holds modules only (the factory builds them and loads their
weights); ``train`` never reaches up to the recipes in ``configs``. Each top-level package is imported in a fresh
interpreter and the other openeva packages it pulled in are checked; a static pass over every module
(function-level and relative imports included) checks the same rules, so a cycle cannot be dodged by importing
inside a function.
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
PACKAGES = {p.stem for p in SRC.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())
            and not p.stem.startswith("_")}
# package -> openeva packages it must never import
FORBIDDEN = {
    "runtime": PACKAGES - {"runtime"},
    "data": {"train", "eval", "quickstart", "cli", "serve"},
    "models": {"factory", "checkpoints", "train", "eval", "evaluators", "quickstart", "cli", "serve", "dense", "data"},
    "layers": {"train", "eval", "quickstart", "cli", "data"},
    "losses": {"train", "eval", "quickstart", "cli", "data"},
    "checkpoints": {"factory", "train", "eval", "quickstart", "cli", "data"},
    "factory": {"train", "eval", "evaluators", "quickstart", "cli", "serve", "dense", "configs"},
    "metrics": {"train", "eval", "quickstart", "cli", "data"},
    "train": {"eval", "quickstart", "cli", "configs"},
    "evaluators": {"train", "eval", "quickstart", "cli", "serve", "dense", "factory", "checkpoints"},
    "eval": {"quickstart", "cli", "serve"},
    "export": {"train", "eval", "quickstart", "cli", "serve"},
    "dense": {"train", "eval", "quickstart", "cli", "serve"},
    "serve": {"train", "eval", "quickstart", "cli"},
    "index": {"train", "eval", "quickstart", "cli", "serve", "factory", "models"},
}


def _files(package: str) -> list[Path]:
    """The package's modules (a module file, or every file of a package directory); none if it does not exist
    (yet): a rule may name a package before it is written."""
    if (SRC / f"{package}.py").is_file():
        return [SRC / f"{package}.py"]
    return sorted((SRC / package).rglob("*.py"))


def _top_level(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "openeva" and len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_fresh_import_pulls_in_no_higher_package(package):
    if not _files(package):
        pytest.skip(f"openeva.{package} does not exist (yet)")
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


def _package_of(path: Path) -> list[str]:
    """The dotted package a module file belongs to, as parts: ``openeva/train/x.py`` -> ["openeva", "train"]
    (an ``__init__.py`` is its own package)."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return parts[:-1]


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports (``from ..models import x``) resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            package = _package_of(path)
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:  # from .. import models: each name may be a module
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _wrong_imports(package: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(SRC)} imports {module}" for path in _files(package) for module in _imports(path)
            if _top_level(module) in forbidden]


def test_no_module_imports_against_the_flow_even_inside_functions():
    wrong = [line for package, forbidden in FORBIDDEN.items() for line in _wrong_imports(package, forbidden)]
    assert not wrong, "\n".join(wrong)


def test_the_rules_name_the_issue_21_boundaries():
    """The redesign's rules, stated as data: one runtime under everything, models as modules only, one builder."""
    assert FORBIDDEN["runtime"] >= {"layers", "models", "checkpoints", "factory", "train", "data"}
    assert {"factory", "checkpoints"} <= FORBIDDEN["models"] and "configs" in FORBIDDEN["train"]
    assert {"factory", "checkpoints", "train", "eval"} <= FORBIDDEN["evaluators"]


def test_the_static_pass_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    """A relative import or one inside a function is caught as surely as a top-level absolute one."""
    pkg = tmp_path / "openeva" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "openeva" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import vit\n")
    (pkg / "vit.py").write_text("from ..factory import create_model\n\ndef f():\n    from ..checkpoints import io\n")
    (pkg / "mim.py").write_text("from .. import train\nfrom .vit import f\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "openeva")
    assert sorted(_wrong_imports("models", FORBIDDEN["models"])) == [
        "models/mim.py imports openeva.train", "models/vit.py imports openeva.checkpoints",
        "models/vit.py imports openeva.factory"]
