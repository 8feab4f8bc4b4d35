"""Typed configs as dataclasses, loaded from YAML with ``key.sub=value`` overrides.

Unknown keys and values of the wrong type are refused with one clear line naming the key, so a typo
in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if origin in (list, tuple, Sequence, dict, Mapping):
        return _convert_collection(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _convert_collection(value: Any, tp: Any, key: str) -> Any:
    """A list (from a YAML list or ``a,b`` text) or a mapping ``{key: value}`` of ``tp``'s item type."""
    if typing.get_origin(tp) in (dict, Mapping):
        (_, inner) = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, inner, f"{key}.{k}") for k, v in value.items()}
    (inner, *_) = typing.get_args(tp) or (Any,)
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return [_convert(v, inner, key) for v in value]


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming them.

    A dataclass may define ``upgrade_keys(data) -> data`` to read the keys of its older versions."""
    upgrade = getattr(cls, "upgrade_keys", None)
    if callable(upgrade):
        data = upgrade(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    data = dict(data)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        # A partial nested section keeps the field's own defaults for the keys it omits: with
        # ``stage2.lr=0.1`` the rest of stage 2 stays PipelineConfig's stage 2, not StageSettings().
        factory = f.default_factory
        if f.name in data and isinstance(data[f.name], Mapping) and factory is not dataclasses.MISSING:
            default = factory()
            if dataclasses.is_dataclass(default):
                data[f.name] = _deep_merge(to_dict(default), data[f.name])
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], exempt: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two (nested) settings, each as ``key (old -> new)``.

    ``exempt``: keys, or prefixes ending in ".", that may change freely. Values are compared after a
    JSON round trip (tuples and lists are equal, as they are once written to disk).
    """
    import json

    a, b = (flatten(json.loads(json.dumps(x, default=str))) for x in (old, new))

    def free(k: str) -> bool:
        return any(k == e or (e.endswith(".") and k.startswith(e)) for e in exempt)

    def short(v: Any) -> str:
        text = "unset" if v is _MISSING else json.dumps(v)
        return text if len(text) <= 40 else text[:37] + "..."

    return [
        f"{k} ({short(a.get(k, _MISSING))} -> {short(b.get(k, _MISSING))})"
        for k in sorted({*a, *b})
        if not free(k) and a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


_MISSING = object()


def _override_value(raw: str) -> Any:
    """The value of one ``key=value`` override.

    YAML decides only the structure: lists, mappings, null and quoted strings. Any other scalar stays
    the text as typed, and the field's type converts it (``_convert``), so ``out=0123`` is the
    directory "0123", not YAML's octal 83, ``out=yes`` is "yes", not True, and ``out=runs #1`` keeps
    its "#1" (YAML reads a comment); ``max_steps=0123`` is still the integer 123.
    """
    text = raw.strip()
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None or isinstance(value, (list, dict)):
        return value
    if isinstance(value, str) and text[0] in "'\"":
        return value
    return text


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` (``optim.lr``) in nested dict ``data`` in place, copying the mappings on the way."""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        child = node.get(p)
        node[p] = dict(child) if isinstance(child, Mapping) else {}
        node = node[p]
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (values: see ``_override_value``)."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        set_path(out, key, _override_value(raw))
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return dict(data)


def load_section(path: str | Path, section: str) -> dict[str, Any]:
    """The top-level mapping ``section`` of a YAML file; a missing one raises, naming the choices."""
    data = load_yaml(path)
    sections = sorted(k for k, v in data.items() if isinstance(v, dict))
    if section not in sections:
        raise ConfigError(f"{path} has no section {section!r} (sections: {', '.join(sections) or 'none'})")
    return dict(data[section])


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    section: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> T:
    """``cls`` from an optional YAML file (or one section of it, which must exist), then ``values``
    (dotted keys to values taken as they are, e.g. paths from command-line flags), then overrides."""
    if section is not None:
        if not path:
            raise ConfigError(f"section {section!r} needs a config file")
        data = load_section(path, section)
    else:
        data = load_yaml(path) if path else {}
    data = dict(data)
    for key, value in (values or {}).items():
        set_path(data, key, value)
    return from_dict(cls, apply_overrides(data, overrides))
