"""Typed JSON configuration: one loader for every config file of hamjax.

A config is a (frozen) dataclass; its JSON file is an object whose keys are the field names.
:func:`from_dict` rebuilds the dataclass from such an object, checking each value against the
field's type annotation (``int``, ``float``, ``bool``, ``str``, tuples, mappings, unions with
``None``, nested dataclasses), and raises :class:`ConfigError` naming the file and the dotted
key of the first bad value. A field whose metadata holds ``{"from_json": function}`` is built
by that function instead (e.g. a model config merged onto a default).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Grid:
...     points: tuple[int, ...] = (1, 1, 1)
...     spacing: float = 0.1
>>> from_dict(Grid, {"points": [2, 2, 1], "spacing": 1})
Grid(points=(2, 2, 1), spacing=1.0)
>>> from_dict(Grid, {"spacing": "fine"}, source="grid.json")
Traceback (most recent call last):
    ...
hamjax.config.ConfigError: grid.json: key 'spacing' must be a number, got 'fine'
>>> from_dict(Grid, {"step": 1}, source="grid.json")
Traceback (most recent call last):
    ...
hamjax.config.ConfigError: grid.json: unknown key 'step'; valid keys: ['points', 'spacing']
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ConfigError", "from_dict", "load", "read_json_object", "to_dict"]


class ConfigError(ValueError):
    """A config file or object that cannot be read; the message names the file and key."""


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; errors name the file (and the line of a syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err.reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a JSON object, got {type(data).__name__}")
    return data


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def _fail(source: str, where: str, message: str) -> typing.NoReturn:
    key = f"key {where!r} " if where else ""
    raise ConfigError(f"{_prefix(source)}{key}{message}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(value, hint, where: str, source: str):
    """``value`` read from JSON, as type ``hint``."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options[:-1]:
            try:
                return _convert(value, arg, where, source)
            except ConfigError:
                pass
        return _convert(value, options[-1], where, source)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            _fail(source, where, f"must be an object, got {value!r}")
        return from_dict(hint, value, source=source, where=where)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            _fail(source, where, f"must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{k}]", source) for k, v in enumerate(value))
        if args:
            if len(args) != len(value):
                _fail(source, where, f"must be a list of {len(args)} values, got {value!r}")
            return tuple(
                _convert(v, a, f"{where}[{k}]", source)
                for k, (v, a) in enumerate(zip(value, args, strict=True))
            )
        return value
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            _fail(source, where, f"must be an object, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {k: _convert(v, args[1], f"{where}.{k}", source) for k, v in value.items()}
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(source, where, f"must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            _fail(source, where, f"must be an integer, got {value!r}")
        return int(value)
    if hint in (bool, str):
        if not isinstance(value, hint):
            _fail(source, where, f"must be {_TYPE_WORDS[hint]}, got {value!r}")
        return value
    return value


def from_dict(cls, data: Mapping, *, source: str = "", where: str = ""):
    """An instance of the dataclass ``cls`` from a JSON object; missing keys take defaults.

    Args:
        cls: the config dataclass.
        data: the object read from JSON.
        source: the file it came from (named in every error).
        where: dotted key of ``data`` inside an enclosing config (for nested configs).

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value the dataclass
            rejects (its ``ValueError``), each named with the file and key.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            name = f"{where}.{key}" if where else key
            raise ConfigError(
                f"{_prefix(source)}unknown key {name!r}; valid keys: {sorted(fields)}"
            )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hook = fields[name].metadata.get("from_json")
        if hook is not None:
            try:
                kwargs[name] = hook(value)
            except (TypeError, ValueError, KeyError) as err:
                _fail(source, key, f"is invalid: {err}")
        else:
            kwargs[name] = _convert(value, hints.get(name, Any), key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{_prefix(source)}{where + ': ' if where else ''}{err}") from None


def load(cls, path: str | os.PathLike):
    """An instance of the dataclass ``cls`` from the JSON file ``path``."""
    return from_dict(cls, read_json_object(path), source=str(path))


def to_dict(value) -> Any:
    """A JSON-ready form of a (nested) config: dataclasses become objects, tuples lists.

    A dataclass with a ``to_dict`` method is written by it.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return to_dict(value.to_dict())
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_dict(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_dict(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
