"""Typed stage configs: YAML files loaded into dataclasses and validated on load.

Unknown keys are errors that list the valid ones; values are type-checked against the dataclass
annotations; ``key.sub=value`` overrides come from the command line. Every stage keeps a copy of
the resolved config in its output directory (:func:`save_config`), and refuses to continue an
experiment whose saved config differs from the new one unless asked to.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.errors import ConfigError, ExperimentError
from nawsv.utils.records import yaml_problem

T = TypeVar("T")


def _describe(source: str, section: str) -> str:
    where = f"section '{section}' of " if section else ""
    return f"{where}{source}"


def _check_value(value: Any, annotation: Any, key: str, source: str, base: Any = None) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise a ConfigError naming ``key``.

    ``base`` is the default a partial dataclass section is completed from (see :func:`_build`).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    bad = ConfigError(f"config key '{key}' in {source}: expected {_type_name(annotation)}, got {value!r}")
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key, source, base)
            except ConfigError as exc:
                errors.append(exc)
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}' in {source}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise bad
        return _build(annotation, value, source, key, base)
    if origin in (list, Sequence, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise bad
            items = [_check_value(v, a, key, source) for v, a in zip(value, args, strict=True)]
        else:
            item_type = args[0] if args else Any
            items = [_check_value(v, item_type, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise bad
        key_type, value_type = args if args else (Any, Any)
        return {_check_value(k, key_type, key, source): _check_value(v, value_type, key, source)
                for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise bad


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _build(cls: type[T], data: Mapping[str, Any], source: str, section: str = "", base: Any = None) -> T:
    """Instantiate ``cls`` from ``data``.

    Keys missing from a section come from ``base`` (the enclosing config's default for this section) when
    there is one, so a partial ``ssl:`` section of a fine-tune config keeps the fine-tune defaults of the
    keys it does not name instead of falling back to the bare ``SSLConfig`` defaults.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(k) for k in unknown)} in {_describe(source, section)}; "
            f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    if base is not None:
        kwargs = {name: getattr(base, name) for name in fields}
    for name, value in data.items():
        dotted = f"{section}.{name}" if section else name
        default = getattr(base, name) if base is not None else _field_default(fields[name])
        nested = default if dataclasses.is_dataclass(default) else None
        kwargs[name] = _check_value(value, hints[name], dotted, source, nested)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config key(s) {', '.join(missing)} in {_describe(source, section)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid value in {_describe(source, section)}: {exc}") from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML ({yaml_problem(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from the YAML at ``path`` (optional) plus ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "the defaults"
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " (with command-line overrides)"
    return _build(cls, data, source)


def config_from_dict(cls: type[T], data: Mapping[str, Any], source: str = "a config dict") -> T:
    """Build ``cls`` from an in-memory mapping with the same validation as :func:`load_config`."""
    return _build(cls, data, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-Python view of a config (tuples become lists, so YAML stays simple)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(cfg)


def dump_config(cfg: Any) -> str:
    """Serialise a config to YAML text (keys in declaration order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _diff(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def save_config(cfg: Any, directory: str | Path, name: str = "config.yaml", allow_change: bool = False) -> Path:
    """Store the resolved config in ``directory``; refuse to silently change an existing experiment's config."""
    path = Path(directory) / name
    text = dump_config(cfg)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return path                                  # unchanged: leave the file (and its mtime) alone
    if path.exists() and not allow_change:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changes = _diff(old, to_dict(cfg))
        if changes:
            raise ExperimentError(
                f"{path} holds a different config than this run ({'; '.join(changes[:5])}"
                f"{'; ...' if len(changes) > 5 else ''}). Use a new experiment directory, or pass "
                f"--force_config true to continue this experiment with the new config")
    atomic_write_text(path, text)
    return path
