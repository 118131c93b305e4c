"""Class names and prompt templates: bundled for ImageNet-1k (1000 names, the 80 OpenAI templates, the 7-template
short set), CIFAR-10/100, MNIST and Fashion-MNIST, or read from the user's JSON / text files.

Dataset metadata, so it lives with the data layer: training (CLIP's zero-shot validation, fine-tuning's label
names) and evaluation both read it here.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

__all__ = ["BUILTIN_DATASETS", "fill_template", "load_builtin", "load_classnames", "load_templates"]

BUILTIN_DATASETS = ("imagenet1k", "cifar10", "cifar100", "mnist", "fashion_mnist")
_PLACEHOLDERS = ("{c}", "{}")


# --------------------------------------------------------------------------------------------- metadata
def load_builtin(name: str) -> dict:
    """The bundled JSON for ``name``: ``{"classnames": [...], "templates": [...], ...}``."""
    key = name.lower().replace("-", "_")
    key = {"imagenet": "imagenet1k", "imagenet_1k": "imagenet1k", "fashionmnist": "fashion_mnist"}.get(key, key)
    if key not in BUILTIN_DATASETS:
        raise ValueError(
            f"{name!r} is neither an existing file nor a builtin dataset; builtins are {', '.join(BUILTIN_DATASETS)}"
        )
    text = resources.files("openeva.data").joinpath("metadata", f"{key}.json").read_text(encoding="utf-8")
    return json.loads(text)


def _split_builtin_spec(spec: str) -> tuple[str, str]:
    """``imagenet1k_short`` -> (``imagenet1k``, ``templates_short``)."""
    if spec.lower().endswith(("_short", "-short")):
        return spec[: -len("_short")], "templates_short"
    return spec, "templates"


def _read_list_file(path: Path, field: str, dataset: str | None) -> list[str]:
    """A JSON list, a JSON dict with ``field`` or keyed by dataset name, or a text file (one per line)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg})") from e
    if isinstance(data, dict):
        if field in data:
            data = data[field]
        elif dataset is not None and dataset in data:
            data = data[dataset]
        elif len(data) == 1:
            data = next(iter(data.values()))
        else:
            raise ValueError(
                f"{path}: JSON object has no {field!r} key and several datasets {sorted(data)[:10]}; "
                f"cannot tell which to use for dataset {dataset!r}"
            )
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError(f"{path}: expected a list of strings for {field}")
    return list(data)


def load_classnames(spec: str | os.PathLike | Sequence[str], dataset: str | None = None) -> list[str]:
    """Class names from a builtin name (``imagenet1k``), a file path, or a list of strings."""
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(spec, str):
        names = list(spec)
    elif Path(spec).is_file():
        names = _read_list_file(Path(spec), "classnames", dataset)
    elif Path(spec).suffix:
        raise FileNotFoundError(f"class names file not found: {spec}")
    else:
        names = load_builtin(spec)["classnames"]
    if not names:
        raise ValueError(f"no class names in {spec!r}")
    return names  # duplicates are allowed: OpenAI's ImageNet names repeat "missile" and "sunglasses"


def load_templates(spec: str | os.PathLike | Sequence[str], dataset: str | None = None) -> list[str]:
    """Prompt templates (``{c}`` or ``{}`` marks the class name) from a builtin name, a file, or a list.

    Builtin names: ``imagenet1k`` (80 OpenAI templates), ``imagenet1k_short`` (7), ``cifar10``, ...
    """
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(spec, str):
        templates = list(spec)
    elif Path(spec).is_file():
        templates = _read_list_file(Path(spec), "templates", dataset)
    elif Path(spec).suffix:
        raise FileNotFoundError(f"templates file not found: {spec}")
    else:
        name, field = _split_builtin_spec(spec)
        templates = load_builtin(name).get(field)
        if templates is None:
            raise ValueError(f"builtin dataset {name!r} has no {field}")
    if not templates:
        raise ValueError(f"no templates in {spec!r}")
    bad = [t for t in templates if not any(p in t for p in _PLACEHOLDERS)]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no class-name placeholder ({' or '.join(_PLACEHOLDERS)}) "
                         "where the class name goes")
    return templates


def fill_template(template: str, classname: str) -> str:
    for p in _PLACEHOLDERS:
        if p in template:
            return template.replace(p, classname)
    raise ValueError(f"template {template!r} has no class-name placeholder")
