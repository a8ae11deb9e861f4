"""The bottom of the configuration's modules: its error type and the reading of its field annotations.

`finetune/config.py` (the tree, its files and validation) and `finetune/config_cli.py` (its flat command
line) both need them; kept here, they import nothing of either, so that `config.py` imports
`config_cli.py` and never the other way round. Standard library only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration file or command-line override is invalid (message names the key)."""


def resolved_fields(section_type: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, its annotation resolved to a type) for each field of a section dataclass."""
    hints = typing.get_type_hints(section_type)
    return [(f, hints[f.name]) for f in dataclasses.fields(section_type)]


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without `None`, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False
