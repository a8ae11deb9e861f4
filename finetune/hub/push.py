"""Check a trained checkpoint folder, write its model card and upload it to the Hugging Face Hub.

The library behind ``python push_to_hub.py`` (CLI in `finetune.hub.cli`):

    python push_to_hub.py --model outputs/run/final --repo-id USER/NAME [--private] \
        [--revision BRANCH] [--commit-message MSG] [--dry-run DIR] [--onnx EXPORT_DIR]

Nothing leaves the machine before the folder is checked: weights in safetensors, `config.json` with
consistent `id2label`/`label2id` and `stuff_label_ids`, the image processor config,
`training_config.yaml` and `all_results.json`. The upload folder (those files + a generated
`README.md` model card; with ``--onnx``, the ONNX export of the checkpoint in ``onnx/``) is staged and sent
in ONE commit (`create_repo(exist_ok=True)` +
`upload_folder`). `--dry-run DIR` writes exactly that folder to DIR and uploads nothing.

The token comes from the `HF_TOKEN` environment variable or `hf auth login`; it is never printed.
Exit status: 0 on success, 1 when the folder is invalid, 2 for a network / authentication failure.
`finetune/train.py --push_to_hub` calls `push_model_dir` (same checks, same card).
"""

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
)

from dataset_scripts.atomic_io import atomic_directory
from finetune.hub.model_card import DEFAULT_LICENSE, build_model_card, onnx_section

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "preprocessor_config.json", "training_config.yaml", "all_results.json")
OPTIONAL_FILES = ("metrics.jsonl", "eval_results.json", "train_results.json")
WEIGHTS = "model.safetensors"
TRAIN_FACTS = "train_results.json"  # start point, hardware, time per stage (finetune/training/export.py)
WEIGHTS_INDEX = "model.safetensors.index.json"
ONNX_FOLDER = "onnx"  # where an ONNX export goes in the model repo


class ModelFolderError(ValueError):
    """The checkpoint folder is missing a piece or is inconsistent (the message names the file)."""


class HubUploadError(RuntimeError):
    """The Hub could not be reached, or refused the upload (authentication, permissions...)."""


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP clients huggingface_hub may use (whichever are installed)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


@dataclass
class CheckedFolder:
    """A validated checkpoint folder: the parsed files and the list of files to upload."""

    path: Path
    config: dict[str, Any]
    training_config: dict[str, Any]
    results: dict[str, Any]
    files: list[str]
    train_facts: dict[str, Any] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: malformed JSON ({err})") from err


def _check_weights(folder: Path) -> list[str]:
    """The safetensors weight files (single file or index + shards), each with a readable header."""
    from safetensors import safe_open

    if (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    elif (folder / WEIGHTS_INDEX).is_file():
        index = _read_json(folder / WEIGHTS_INDEX)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ModelFolderError(f"{folder / WEIGHTS_INDEX}: empty weight_map")
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelFolderError(
                f"{folder}: weight shard(s) listed in {WEIGHTS_INDEX} are missing: {missing}"
            )
        files = [WEIGHTS_INDEX, *shards]
    else:
        legacy = [p.name for p in folder.glob("*.bin")]
        hint = (
            f" (found {legacy}: re-save with save_pretrained(..., safe_serialization=True))" if legacy else ""
        )
        raise ModelFolderError(f"{folder}: no {WEIGHTS}; weights must be in safetensors{hint}")
    for name in files:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(folder / name), framework="pt") as handle:
                    if not list(handle.keys()):
                        raise ModelFolderError(f"{folder / name}: holds no tensors")
            except ModelFolderError:
                raise
            except Exception as err:  # safetensors raises its own error types for corrupt headers
                raise ModelFolderError(f"{folder / name}: not a readable safetensors file ({err})") from err
    return files


def _check_config(path: Path) -> dict[str, Any]:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    if config.get("model_type") != "detr":
        raise ModelFolderError(f"{path}: model_type is {config.get('model_type')!r}, expected 'detr'")
    id2label, label2id = config.get("id2label"), config.get("label2id")
    if not id2label or not label2id:
        raise ModelFolderError(f"{path}: id2label and label2id are required (the dataset's class names)")
    try:
        labels = {int(k): v for k, v in id2label.items()}
    except ValueError as err:
        raise ModelFolderError(f"{path}: id2label keys must be integers ({err})") from err
    if sorted(labels) != list(range(len(labels))):
        raise ModelFolderError(f"{path}: id2label ids must be 0..{len(labels) - 1}, got {sorted(labels)}")
    expected = {name: i for i, name in labels.items()}
    if len(expected) != len(labels):
        raise ModelFolderError(f"{path}: id2label repeats a class name")
    if {k: int(v) for k, v in label2id.items()} != expected:
        diff = sorted(set(label2id.items()) ^ set(expected.items()), key=str)[:6]
        raise ModelFolderError(f"{path}: label2id does not mirror id2label (differences: {diff})")
    stuff = config.get("stuff_label_ids")
    if stuff is None:
        raise ModelFolderError(f"{path}: stuff_label_ids is missing (needed to fuse stuff classes)")
    bad = [i for i in stuff if int(i) not in labels]
    if bad:
        raise ModelFolderError(f"{path}: stuff_label_ids {bad} are not labels of id2label")
    return config


def _check_processor(path: Path) -> None:
    processor = _read_json(path)
    kind = processor.get("image_processor_type", "") if isinstance(processor, dict) else ""
    if "Detr" not in kind:
        raise ModelFolderError(f"{path}: image_processor_type is {kind!r}, expected a DetrImageProcessor")
    if processor.get("format") not in (None, "coco_panoptic"):
        logger.warning("%s: format is %r, not 'coco_panoptic'", path, processor.get("format"))


def check_model_dir(model_dir: str | Path) -> CheckedFolder:
    """Validate a checkpoint folder (interface 3) before anything is uploaded.

    Raises:
        ModelFolderError: a file is missing, unreadable or inconsistent; the message names it.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelFolderError(
            f"{folder}: not a folder (expected a training output such as outputs/run/final)"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"{folder}: missing {', '.join(missing)} (is this a finetune/train.py final/ folder?)"
        )
    weights = _check_weights(folder)
    config = _check_config(folder / "config.json")
    _check_processor(folder / "preprocessor_config.json")
    try:
        training_config = yaml.safe_load((folder / "training_config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ModelFolderError(f"{folder / 'training_config.yaml'}: malformed YAML ({err})") from err
    if not isinstance(training_config, dict):
        raise ModelFolderError(f"{folder / 'training_config.yaml'}: expected a mapping of sections")
    results = _read_json(folder / "all_results.json")
    if not isinstance(results, dict):
        raise ModelFolderError(f"{folder / 'all_results.json'}: expected a JSON object of metrics")
    if not isinstance(results.get("pq"), int | float):
        raise ModelFolderError(f"{folder / 'all_results.json'}: no 'pq' metric (was the model evaluated?)")
    optional = [name for name in OPTIONAL_FILES if (folder / name).is_file()]
    files = [*weights, *REQUIRED_FILES, *optional]
    ignored = sorted(p.name for p in folder.iterdir() if p.name not in files and p.name != "README.md")
    if ignored:
        logger.info("not uploaded (not part of a model repo): %s", ", ".join(ignored))
    train_facts = _read_json(folder / TRAIN_FACTS) if (folder / TRAIN_FACTS).is_file() else None
    if train_facts is not None and not isinstance(train_facts, dict):
        raise ModelFolderError(f"{folder / TRAIN_FACTS}: expected a JSON object")
    return CheckedFolder(folder, config, training_config, results, files, train_facts)


def stage_upload_folder(
    checked: CheckedFolder,
    target: Path,
    repo_id: str,
    license: str = DEFAULT_LICENSE,
    dataset_id: str | None = None,
    onnx_export: tuple[Path, dict[str, Any]] | None = None,
) -> Path:
    """Copy the files to upload into `target` (which must be empty) and write the model card there.

    `onnx_export`: ``(folder, manifest)`` from `check_onnx_export`, copied to ``onnx/`` and described in the card.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in checked.files:
        shutil.copy2(checked.path / name, target / name)
    if onnx_export is not None:
        shutil.copytree(onnx_export[0], target / ONNX_FOLDER)
    card = build_model_card(
        checked.config,
        checked.training_config,
        checked.results,
        repo_id,
        license=license,
        dataset_id=dataset_id,
        train_facts=checked.train_facts,
    )
    if onnx_export is not None:
        card = type(card)(card.content.rstrip("\n") + "\n\n" + onnx_section(repo_id, onnx_export[1]) + "\n")
    card.save(target / "README.md")
    return target


def check_onnx_export(folder: str | Path, checked: CheckedFolder) -> tuple[Path, dict[str, Any]]:
    """An ONNX export folder (``detr-panoptic-export``) of the checkpoint being uploaded.

    Raises:
        ModelFolderError: not a complete export, or an export of a model with other labels.
    """
    folder = Path(folder)
    manifest_path = folder / "export.json"
    if not manifest_path.is_file():
        raise ModelFolderError(f"--onnx {folder}: not an ONNX export folder (no export.json; see detr-panoptic-export)")
    manifest = _read_json(manifest_path)
    for name in ("body.onnx", "mask_head.onnx", "config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise ModelFolderError(f"--onnx {folder}: {name} is missing")
    exported = _read_json(folder / "config.json")
    if exported.get("id2label") != checked.config.get("id2label"):
        raise ModelFolderError(
            f"--onnx {folder}: its labels differ from {checked.path / 'config.json'} (an export of another model?)"
        )
    return folder, manifest


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ModelFolderError(f"invalid --repo-id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise ModelFolderError(f"invalid --repo-id {repo_id!r}: expected USER/NAME or ORG/NAME")


def push_model_dir(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run_dir: str | Path | None = None,
    api: HfApi | None = None,
    license: str = DEFAULT_LICENSE,
    dataset_id: str | None = None,
    overwrite_dry_run: bool = False,
    onnx_dir: str | Path | None = None,
) -> str:
    """Check `model_dir`, write its model card and upload it in one commit (or stage it for a dry run).

    Args:
        model_dir: The checkpoint folder (``output_dir/final``).
        repo_id: ``user/name`` on the Hub.
        private: Create the repo private (an existing repo keeps its visibility).
        revision: Branch to commit to (created from main when missing); default main.
        commit_message: Default: "Upload <name> (PQ x.x)".
        dry_run_dir: Write the exact upload folder here and stop (no network).
        api: An `HfApi` (tests pass a recorder); default: a new one using the saved/env token.
        license, dataset_id: Model card metadata.
        overwrite_dry_run: Replace an existing `dry_run_dir`.
        onnx_dir: An ONNX export of the checkpoint (``detr-panoptic-export``), uploaded as ``onnx/``.

    Returns:
        The commit URL, or the dry-run folder path.

    Raises:
        ModelFolderError: invalid folder or repo id (nothing uploaded).
        HubUploadError: no token, Hub unreachable, or upload refused.
    """
    _validate_repo_id(repo_id)
    checked = check_model_dir(model_dir)
    onnx_export = check_onnx_export(onnx_dir, checked) if onnx_dir is not None else None
    if commit_message is None:
        commit_message = f"Upload {repo_id.split('/')[-1]} (PQ {float(checked.results['pq']):.3f})"

    if dry_run_dir is not None:
        with atomic_directory(dry_run_dir, overwrite=overwrite_dry_run) as tmp:
            stage_upload_folder(
                checked, tmp, repo_id, license=license, dataset_id=dataset_id, onnx_export=onnx_export
            )
        logger.info("dry run: wrote the upload folder to %s (nothing uploaded)", dry_run_dir)
        return str(dry_run_dir)

    api = api if api is not None else _authenticated_api()
    with tempfile.TemporaryDirectory(prefix="push_to_hub-") as tmp:
        staged = stage_upload_folder(
            checked, Path(tmp) / "upload", repo_id, license=license, dataset_id=dataset_id, onnx_export=onnx_export
        )
        with _hub_errors(repo_id, "upload to"):
            api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=str(staged),
                revision=revision,
                commit_message=commit_message,
            )
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("uploaded %s to %s in one commit: %s", checked.path, repo_id, url)
    return url


def check_hub_access(repo_id: str, private: bool = False, api: HfApi | None = None) -> None:
    """Before a training run that will push: the repo id is valid, a token exists, and the repo can be
    created (it is created now, empty, when missing, as the Hugging Face Trainer does).

    Raises:
        ModelFolderError: invalid repo id.
        HubUploadError: no token, Hub unreachable, or creation refused (the message says nothing was trained).
    """
    _validate_repo_id(repo_id)
    api = api if api is not None else _authenticated_api("nothing trained")
    with _hub_errors(repo_id, "creation of the repository", "nothing trained"):
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)


def _authenticated_api(consequence: str = "nothing uploaded") -> HfApi:
    if get_token() is None:
        raise HubUploadError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login` ({consequence})")
    return HfApi()


@contextlib.contextmanager
def _hub_errors(repo_id: str, action: str, consequence: str = "nothing uploaded") -> Iterator[None]:
    """Turn the Hub client's errors into one-line `HubUploadError`s (`action`: "upload to" + the repo id)."""
    try:
        yield
    except LocalTokenNotFoundError as err:
        raise HubUploadError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login` ({consequence})") from err
    except OfflineModeIsEnabled as err:
        raise HubUploadError(f"HF_HUB_OFFLINE=1 is set: unset it to push ({consequence})") from err
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubUploadError(
                f"the Hub refused the {action} {repo_id} (HTTP {status}): check that your token has write "
                f"access to that user/organisation (`hf auth login`) ({consequence})"
            ) from err
        raise HubUploadError(f"{action} {repo_id} failed: {_one_line(err)} ({consequence})") from err
    except _network_errors() as err:
        raise HubUploadError(
            f"cannot reach the Hugging Face Hub ({type(err).__name__}: {_one_line(err)}) ({consequence})"
        ) from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
