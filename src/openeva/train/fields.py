"""Typed config sections from dicts and command-line strings: the parsing every config section shares
(:mod:`openeva.train.config` for the run, :mod:`openeva.train.options` for the built-in tasks' options)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from typing import Any, Union

def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def section_from_dict(cls, d: dict[str, Any], prefix: str = "", label: str | None = None):
    """A (nested) dataclass from a dict: values coerced by the field types, unknown keys refused with the one
    did-you-mean message (``label`` names what the keys are, e.g. a task's options; keys shown without prefix)."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'} must be a dict, got {type(d).__name__}")
    types_ = field_types(cls)
    unknown = [k for k in d if k not in types_]
    if unknown:
        if label is not None:
            raise ValueError(unknown_key_message(unknown[0], list(types_), label))
        raise ValueError(unknown_key_message(prefix + unknown[0], list(all_keys(cls, prefix))))
    kwargs = {}
    for key, value in d.items():
        tp = types_[key]
        if _is_section(tp):
            kwargs[key] = section_from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def all_keys(cls, prefix: str = ""):
    for name, tp in field_types(cls).items():
        if _is_section(tp):
            yield from all_keys(tp, f"{prefix}{name}.")
        else:
            yield prefix + name


def unknown_key_message(key: str, known: list[str], label: str = "config key") -> str:
    """The one message for an unknown key: the closest known keys (or all of them)."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, known, n=4, cutoff=0.5)
    close += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {', '.join(close[:5])}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown {label} {key!r}{hint}"


def _optional_inner(tp):
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp, key: str):
    """A Python value (from a config dict / JSON) converted to the field's type, or ValueError naming the key."""
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ValueError(f"config {key}=None is invalid: this field cannot be None")
    origin = typing.get_origin(inner)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"config {key}={value!r} is invalid: expected a sequence")
        args = typing.get_args(inner)
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ValueError(f"config {key}={value!r} is invalid: expected {len(args)} values")
        return tuple(_coerce(v, a, key) for v, a in zip(items, args))
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config {key}={value!r} is invalid: expected a dict")
        return dict(value)
    if inner is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config {key}={value!r} is invalid: expected true or false")
        return value
    if inner is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError(f"config {key}={value!r} is invalid: expected an integer")
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {key}={value!r} is invalid: expected a number")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ValueError(f"config {key}={value!r} is invalid: expected a string")
        return value
    return value


def parse_value(text: str, tp, key: str):
    """A command-line string parsed by the field's type: ``none``, ``true``/``false``, numbers, ``a,b`` tuples."""
    inner, optional = _optional_inner(tp)
    stripped = text.strip()
    if stripped.lower() in ("none", "null") and (optional or tp is Any):
        return None
    origin = typing.get_origin(inner)
    if origin is tuple:
        if stripped.startswith(("(", "[")):
            try:
                items = ast.literal_eval(stripped)
            except (ValueError, SyntaxError):
                raise ValueError(f"config {key}={text!r} is invalid: not a tuple literal") from None
        else:
            items = [s for s in stripped.split(",") if s.strip()]
        args = typing.get_args(inner)
        elem = args[0]
        if not (len(args) == 2 and args[1] is Ellipsis) and len(items) != len(args):
            raise ValueError(f"config {key}={text!r} is invalid: expected {len(args)} comma-separated values")
        elems = args if not (len(args) == 2 and args[1] is Ellipsis) else [elem] * len(items)
        return tuple(parse_value(str(v), a, key) if isinstance(v, str) else _coerce(v, a, key)
                     for v, a in zip(items, elems))
    if inner is bool:
        low = stripped.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"config {key}={text!r} is invalid: expected true or false")
    if inner is int:
        try:
            return int(stripped)
        except ValueError:
            raise ValueError(f"config {key}={text!r} is invalid: expected an integer") from None
    if inner is float:
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(f"config {key}={text!r} is invalid: expected a number") from None
    if inner is str:
        return text
    try:  # dicts / Any: a Python literal, else the raw string
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return text
