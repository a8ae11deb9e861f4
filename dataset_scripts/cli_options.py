"""The one command-line vocabulary of every script: shared flag names, and old spellings kept hidden.

Every CLI of the project (converter, dataset builder, stuff labeller, sample generator, evaluate,
predict, the PQ CLI, the demo) spells a shared concept the same way (``docs/cli.md`` has the table)::

    parser = make_parser("Convert CVAT exports ...")
    add_option(parser, "output_dir", aliases=("--out",), required=True, help="output folder")

An alias (an old spelling, kept for one release) is accepted like the flag itself but not shown in
``--help`` (`AliasHidingFormatter`). This module imports nothing heavy, so that ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from typing import Any

# concept (the argparse ``dest``) -> (flag, metavar); None: a switch without a value.
VOCABULARY: dict[str, tuple[str, str | None]] = {
    "model": ("--model", "MODEL"),
    "dataset": ("--dataset", "DIR"),
    "output_dir": ("--output-dir", "DIR"),
    "output_json": ("--output-json", "FILE"),
    "num_workers": ("--num-workers", "N"),
    "batch_size": ("--batch-size", "N"),
    "device": ("--device", "DEVICE"),
    "threshold": ("--threshold", "T"),
    "seed": ("--seed", "N"),
    "overwrite": ("--overwrite", None),
}


class AliasHidingFormatter(argparse.HelpFormatter):
    """Help formatter that leaves out the option strings an `add_option` call marked as aliases."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


class VocabularyParser(argparse.ArgumentParser):
    """Argument parser whose usage errors name an option by its flag only, not by its hidden aliases."""

    def error(self, message: str):
        for action in self._actions:
            hidden = getattr(action, "hidden_aliases", ())
            if hidden:
                shown = "/".join(s for s in action.option_strings if s not in hidden)
                message = message.replace("/".join(action.option_strings), shown)
        super().error(message)


def make_parser(description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser whose help and usage errors hide the aliases of `add_option`.

    Args:
        description: The command's one-line description.
        **kwargs: Passed on to `argparse.ArgumentParser` (``prog``, ``epilog``...).
    """
    kwargs.setdefault("formatter_class", AliasHidingFormatter)
    return VocabularyParser(description=description, **kwargs)


def add_option(
    parser: argparse.ArgumentParser, concept: str, *, aliases: Sequence[str] = (), **kwargs: Any
) -> argparse.Action:
    """Add the vocabulary flag of ``concept`` (``dest=concept``), with hidden old spellings.

    Args:
        parser: A parser from `make_parser` (another formatter would show the aliases).
        concept: A key of `VOCABULARY`, e.g. ``"output_dir"`` for ``--output-dir DIR``.
        aliases: Old spellings accepted as the same option and left out of ``--help``.
        **kwargs: `argparse.ArgumentParser.add_argument` arguments (``help`` is required:
            every option is documented).

    Returns:
        The argparse action.
    """
    flag, metavar = VOCABULARY[concept]
    if not kwargs.get("help"):
        raise ValueError(f"{flag}: every option needs a help text")
    if metavar is None:
        kwargs.setdefault("action", "store_true")
    else:
        kwargs.setdefault("metavar", metavar)
    action = parser.add_argument(flag, *aliases, dest=concept, **kwargs)
    action.hidden_aliases = frozenset(aliases)
    return action
