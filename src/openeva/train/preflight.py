"""Checks shared by the built-in tasks' preflights: they need no model and no compute, only names and paths."""

from __future__ import annotations

from pathlib import Path

from openeva.factory import resolve_spec

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def looks_like_path(value: str) -> bool:
    """A weights value that names a file or folder (rather than a registered tag)."""
    return "/" in value or value.startswith(".") or Path(value).suffix in WEIGHT_SUFFIXES


def check_weights(key: str, value: str | None, always_path: bool = False) -> None:
    """FileNotFoundError naming the config key when ``value`` is a path (or ``always_path``) that does not exist."""
    if value and (always_path or looks_like_path(value)) and not Path(value).exists():
        raise FileNotFoundError(f"{key}: checkpoint not found: {value}")


def resolve_model(key: str, name: str):
    """``resolve_spec(name)`` with the config key in its error: -> (ModelSpec, saved weights or None)."""
    try:
        return resolve_spec(name)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{key}: {e}") from None
