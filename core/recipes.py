"""Recipe machinery: typed YAML → dataclasses, dotted overrides, nested merges, hashes.

Kept apart from the schema (`config.py`) so the schema reads as a list of sections, and
so the same builder serves recipes, `key=value` overrides and Ray Tune trial params.
A dataclass with a `VARIANTS` mapping is a *tagged section*: its `name` field picks the
dataclass the mapping is built as (`method: {name: cod, ...}` → `CodConfig`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override names an unknown key or has a value of the wrong type."""


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _tagged(hint: type, value: dict[str, Any], where: str) -> type:
    """The variant of a tagged section that `value["name"]` names."""
    variants: dict[str, type] = hint.VARIANTS  # type: ignore[attr-defined]
    name = value.get("name", hint.DEFAULT)  # type: ignore[attr-defined]
    if name not in variants:
        raise ConfigError(f"{where}.name: {name!r} is not one of {', '.join(sorted(variants))}")
    return variants[name]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a dataclass field type (lenient on int→float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if hasattr(hint, "VARIANTS"):
            hint = _tagged(hint, value, where)
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (int, float, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    if hasattr(cls, "VARIANTS") and isinstance(data, dict):
        cls = _tagged(cls, data, where or "section")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}" if where else k)
    return cls(**kwargs)


def check_moved(data: dict[str, Any], moved: dict[str, str]) -> None:
    """An old key gets an error naming its new place (not a generic "unknown key")."""
    for old, new in moved.items():
        node: Any = data
        parts = old.split(".")
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            raise ConfigError(f"{old} has moved to {new}; rename it in the recipe or override")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value")
        key, raw = o.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: the value is not valid YAML ({e})") from e
        _set_dotted(tree, key.strip(), value)
    return tree


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested merge, `extra` wins; recipes + overrides and sweep params share it."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def stable_hash(obj: Any) -> str:
    """Short content hash of JSON-able data: the cache key for teachers and generations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
