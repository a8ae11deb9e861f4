"""Checks run before any data work, so that a run that cannot finish fails in seconds, not at its end.

    check_model_source   the model loads: a local checkpoint folder has a DETR `config.json` and weights; a
                         Hub id has a config reachable (or cached; `HF_HUB_OFFLINE`); a random init has nothing
                         to fetch
    check_output_dir     `output_dir` is (or can be created as) a writable folder
    check_hub_access     with `push_to_hub`: the repo id is valid, a token exists, the repo can be created

Each raises the project's one-line user error (`ModelUnavailableError`, `OutputDirError`, `HubUploadError`,
`ModelFolderError`), which `finetune/train.py` turns into exit status 1 without a traceback. Nothing is
written except, with `push_to_hub`, the (empty) Hub repository, as the Hugging Face Trainer does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from finetune.config import TrainingConfig
from finetune.hub.push import HubUploadError, ModelFolderError, check_hub_access
from finetune.modeling.loading import QUICKSTART_CONFIG, ModelUnavailableError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class OutputDirError(OSError):
    """`output_dir` is not a folder that this process can write."""


def check_model_source(model_name_or_path: str | None) -> None:
    """The model to start from can be loaded (cheap: its config only).

    Raises:
        ModelUnavailableError: a local folder that is not a DETR checkpoint, a path that does not exist, or a Hub
            id whose config cannot be fetched (offline, no such repository) nor found in the cache.
    """
    if model_name_or_path is None:
        return  # random init from config_overrides (checked by the configuration)
    local = Path(model_name_or_path).expanduser()
    if local.is_dir():
        _check_local_checkpoint(local)
    elif local.exists() or _looks_like_a_path(model_name_or_path):
        raise ModelUnavailableError(
            f"model_name_or_path {model_name_or_path}: no such checkpoint folder (a folder with config.json and "
            "model.safetensors, e.g. output_dir/final of a previous run)"
        )
    else:
        _check_hub_config(model_name_or_path)


def _looks_like_a_path(name: str) -> bool:
    """Not a Hub id (`name` or `user/name`): absolute, relative with `.`/`~`, or more than one `/`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_local_checkpoint(folder: Path) -> None:
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise ModelUnavailableError(
            f"model_name_or_path {folder}: no config.json (not a DetrForSegmentation checkpoint folder)"
        ) from None
    except (OSError, ValueError, AttributeError) as err:
        raise ModelUnavailableError(f"model_name_or_path {folder}: config.json is unreadable ({err})") from err
    if model_type != "detr":
        raise ModelUnavailableError(
            f"model_name_or_path {folder}: config.json describes a {model_type!r} model, not a DETR (model_type detr)"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelUnavailableError(
            f"model_name_or_path {folder}: no weights ({' / '.join(WEIGHT_FILES[::2])}) next to config.json"
        )


def _check_hub_config(model_id: str) -> None:
    from transformers import DetrConfig

    try:
        DetrConfig.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "Hub unreachable, or no such repository"
        raise ModelUnavailableError(
            f"cannot load the model {model_id!r} ({why}; not in the local cache either): train offline with "
            f"--config {QUICKSTART_CONFIG}, or set model_name_or_path (--model) to a local checkpoint folder "
            f"(fetched elsewhere with `hf download {model_id} --local-dir DIR`)"
        ) from err


def check_output_dir(output_dir: str | Path) -> None:
    """`output_dir` is a writable folder, or can be created (nothing is created: its nearest existing
    parent is probed with a temporary file).

    Raises:
        OutputDirError: a file stands in the way, or the folder (or its parent) is not writable.
    """
    path = Path(output_dir).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"output_dir {output_dir}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        what = "is" if probe == path else f"cannot be created: {probe} is"
        raise OutputDirError(f"output_dir {output_dir} {what} not writable ({err.strerror or err})") from err


def preflight(config: TrainingConfig, accelerator: Accelerator) -> None:
    """All the checks, cheapest first (see the module docstring).

    The local checks run on every process; the Hub check on the main process only, its error (if any) sent
    to the others, so that all processes stop together.
    """
    check_output_dir(config.run.output_dir)
    check_model_source(config.model.model_name_or_path)
    if not config.hub.push_to_hub:
        return
    error: list[str | None] = [None]
    if accelerator.is_main_process:
        try:
            check_hub_access(config.hub.hub_model_id, private=config.hub.hub_private)
        except (HubUploadError, ModelFolderError) as err:
            error = [f"--push_to_hub: {err}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(error)
    if error[0] is not None:
        raise HubUploadError(error[0])
