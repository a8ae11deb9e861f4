"""The flat command line of a `TrainingConfig` (`finetune/train.py`): options, help text, aliases, values.

The configuration tree is passed in (`parse_command_line(TrainingConfig, STAGE_NAMES, argv)`), so that this
module imports nothing from `finetune/config.py`, which imports it (no import cycle).

`HfArgumentParser` only understands flat dataclasses: one is generated per section, every field optional
with default None (= not given), its help text the field's documentation (`metadata["help"]`, else the
docstring under the field) followed by `[section.field; default: ...]`. Stage fields are prefixed by the
stage (`--detection_epochs`); every option also takes dashes (`--output-dir`); `CLI_ALIASES` adds the
names the other scripts use (`--model`, `--dataset`). `parse_command_line` returns the `--config` file and
the overrides, converted to the fields' types; `finetune.config.parse_config` assembles and validates.
Only `transformers.hf_argparser` is imported (no torch), so that `train.py --help` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import typing
from dataclasses import field
from typing import Any

from finetune.config_types import ConfigError, base_type, resolved_fields

CLI_DESCRIPTION = """Fine-tune DETR panoptic segmentation in two stages (boxes, then masks).

  accelerate launch finetune/train.py --config finetune/configs/quickstart.yaml
  accelerate launch finetune/train.py --config finetune/configs/default.yaml --dataset DIR --output-dir OUT

Every option overrides the key of the --config file named in [brackets]; lists take comma-separated
values, dicts take JSON, optional values take `null`."""


def _cli_name(section: str, name: str, prefixed: tuple[str, ...]) -> str:
    return f"{section}_{name}" if section in prefixed else name


# The common names of the project's other scripts (predict.py, evaluate.py, push_to_hub.py), accepted as
# aliases of the training names. Every option also takes dashes: `--output-dir`, `--detection-epochs`.
CLI_ALIASES = {
    "model_name_or_path": ["--model"],
    "dataset_dir": ["--dataset"],
}


@functools.cache
def _attribute_docstrings(section_type: type) -> dict[str, str]:
    """{field: the string literal that follows it in the class body} (the sections' field documentation)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(section_type)))
    except (OSError, TypeError):  # no source (frozen application): fall back to the metadata help only
        return {}
    docs, body = {}, tree.body[0].body
    for node, following in zip(body, body[1:], strict=False):
        is_doc = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def field_help(section_type: type, f: dataclasses.Field) -> str:
    """The help text of a section field: `metadata["help"]`, else the docstring under the field ("" if none)."""
    return f.metadata.get("help") or _attribute_docstrings(section_type).get(f.name, "")


def _metavar(base: Any) -> str:
    origin = typing.get_origin(base) or base
    return {int: "N", float: "X", list: "A,B", dict: "JSON"}.get(origin, "VALUE")


def _default_text(defaults: Any, section: str, f: dataclasses.Field) -> str:
    value = getattr(getattr(defaults, section), f.name)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "empty"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return "null" if value is None else str(value)


def _cli_dataclasses(tree: type, prefixed: tuple[str, ...]) -> tuple[list[type], dict[str, tuple[str, str, Any]]]:
    """Flat dataclasses for `HfArgumentParser`: every field optional with default None (= not given).

    Args:
        tree: the configuration class (`TrainingConfig`): a dataclass of section dataclasses.
        prefixed: sections whose options take the section as prefix (the stages: `--detection_epochs`).

    Returns the dataclasses and {cli name: (section, field name, field type)}.
    """
    classes, index = [], {}
    defaults = tree()
    for section_field in dataclasses.fields(tree):
        section = section_field.name
        section_type = type(getattr(defaults, section))
        flat = []
        for f, tp in resolved_fields(section_type):
            name = _cli_name(section, f.name, prefixed)
            assert name not in index, (
                f"duplicate CLI name {name}"
            )  # field names must stay unique across sections
            index[name] = (section, f.name, tp)
            base, _ = base_type(tp)
            # Values come as strings and are converted by `_convert_cli_value` (lists "a,b", dicts as JSON,
            # "null" for optional fields); booleans keep HfArgumentParser's `--flag` / `--flag false` handling.
            cli_type = bool if base is bool else (str | None)  # bool + default None: `--flag` alone = True
            doc = f"{field_help(section_type, f)} [{section}.{f.name}; default: {_default_text(defaults, section, f)}]"
            metadata = {"help": doc.replace("%", "%%").lstrip(), "aliases": CLI_ALIASES.get(name, [])}
            if base is not bool:
                metadata["metavar"] = _metavar(base)
            flat.append((name, cli_type, field(default=None, metadata=metadata)))
        cli_class = dataclasses.make_dataclass(f"{section.title()}Args", flat)
        cli_class._argument_group_name = f"{section}: {section_type.__doc__.splitlines()[0].rstrip('.')}"
        classes.append(cli_class)
    return classes, index


def _convert_cli_value(key: str, raw: Any, tp: Any) -> Any:
    base, optional = base_type(tp)
    if isinstance(raw, str) and optional and raw.lower() in ("null", "none"):
        return None
    origin = typing.get_origin(base)
    if origin is list:
        (item_type,) = typing.get_args(base)
        items = [s.strip() for s in raw.split(",") if s.strip()]
        try:
            return [item_type(s) for s in items]
        except ValueError as err:
            raise ConfigError(
                f"--{key}: expected comma-separated {item_type.__name__} values, got {raw!r}"
            ) from err
    if origin is dict or base is dict:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--{key}: expected a JSON object, got {raw!r}") from err
        if not isinstance(value, dict):
            raise ConfigError(f"--{key}: expected a JSON object, got {raw!r}")
        return value
    if base in (int, float):
        try:
            return base(raw)
        except ValueError as err:
            raise ConfigError(f"--{key}: expected {base.__name__}, got {raw!r}") from err
    return raw


def parse_command_line(
    tree: type, prefixed: tuple[str, ...], argv: list[str] | None = None
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Parse `[--config FILE] [--key value ...]`; `--help` prints the options and exits.

    Args:
        tree: the configuration class (`TrainingConfig`), whose sections give the options.
        prefixed: sections whose options take the section as prefix (`finetune.config.STAGE_NAMES`).
        argv: command-line arguments without the program name (None = `sys.argv[1:]`).

    Returns:
        (the --config file or None, {section: {field: value}} for the options given).

    Raises:
        ConfigError: unknown options, values of the wrong type.
    """
    from transformers.hf_argparser import HfArgumentParser

    classes, index = _cli_dataclasses(tree, prefixed)
    # Plain help formatter: the flat options all default to None (= not given), the real default is in the help.
    parser = HfArgumentParser(
        classes,
        usage="%(prog)s [--config FILE] [--option VALUE ...]",
        description=CLI_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="YAML or JSON file (sections as in finetune/configs/); options given "
        "on the command line override it."
    )
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    *flat_args, remaining = parsed
    if remaining:
        raise ConfigError(f"unknown command-line argument(s): {remaining}")
    config_path = None
    overrides: dict[str, dict[str, Any]] = {}
    for obj in flat_args:
        for key, raw in vars(obj).items():
            if key == "config":
                config_path = raw
                continue
            if raw is None or key not in index:
                continue
            section, name, tp = index[key]
            overrides.setdefault(section, {})[name] = _convert_cli_value(key, raw, tp)
    return config_path, overrides
