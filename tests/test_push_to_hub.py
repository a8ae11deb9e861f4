"""Tests of `push_to_hub.py` without network: dry-run folder, validation, upload through a recorder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from finetune.hub import cli as push_cli
from finetune.hub import push as push_to_hub
from finetune.hub.push import HubUploadError, ModelFolderError, push_model_dir
from tests.hub_recorder import RecordingApi
from tests.tiny_checkpoints import LABELS, STUFF, save_tiny_checkpoint

RESULTS = {
    "pq": 0.4321,
    "sq": 0.75,
    "rq": 0.55,
    "pq_things": 0.5,
    "pq_stuff": 0.3,
    "box_map": 0.61,
    "per_class_pq": {"excavator": 0.62, "person": 0.38, "wall": 0.35, "sky": 0.25},
    "train_runtime": 5400.0,
    "hardware": "1x NVIDIA H100",
}
UPLOADED = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "training_config.yaml",
    "all_results.json",
    "train_results.json",
    "README.md",
}
# train.py records where the run started (the model card's base model); the other facts are left to the
# keys older folders kept in all_results.json (RESULTS).
TRAIN_FACTS = {"started_from": {"kind": "hub", "name": "facebook/detr-resnet-50-panoptic", "config_overrides": {}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A final/ folder like train.py writes it (tiny weights, real config sections)."""
    from finetune.config import TrainingConfig

    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "final")
    config = TrainingConfig()
    config.detection.epochs, config.masks.epochs, config.masks.lr = 50, 25, 5e-5
    (folder / "training_config.yaml").write_text(config.to_yaml())
    (folder / "all_results.json").write_text(json.dumps(RESULTS))
    (folder / "train_results.json").write_text(json.dumps(TRAIN_FACTS))
    (folder / "optimizer.pt").write_bytes(b"not for the hub")
    return folder


@pytest.fixture
def model_dir(trained, tmp_path) -> Path:
    """A private copy the test may break."""
    return Path(shutil.copytree(trained, tmp_path / "final"))


def test_dry_run_writes_exactly_the_upload_folder(trained, tmp_path):
    out = tmp_path / "dry"
    assert (
        push_cli.main(["--model", str(trained), "--repo-id", "me/detr-site", "--dry-run", str(out)])
        == 0
    )
    assert {p.name for p in out.iterdir()} == UPLOADED  # optimizer.pt left out
    for name in UPLOADED - {"README.md"}:
        assert (out / name).read_bytes() == (trained / name).read_bytes(), name

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-segmentation"
    assert data.license == "apache-2.0"
    assert data.base_model == "facebook/detr-resnet-50-panoptic"
    assert "panoptic-segmentation" in data.tags
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    # One unit everywhere: fractions in [0, 1], as in all_results.json.
    assert metrics == {key: RESULTS[key] for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "box_map")}
    assert {r.task_type for r in data.eval_results} == {"image-segmentation"}
    text = card.text
    for i, name in enumerate(LABELS):  # classes with type and per-class PQ
        kind = "stuff" if i in STUFF else "thing"
        pq = f"{RESULTS['per_class_pq'][name]:.3f}"
        assert f"| {i} | {name} | {kind} | {pq} |" in text
    assert 'pipeline("image-segmentation", model="me/detr-site")' in text
    assert "label_ids_to_fuse=set(model.config.stuff_label_ids)" in text
    assert "**detection**" in text and "50 epochs" in text and "**masks**" in text and "lr 5e-05" in text
    assert "1x NVIDIA H100" in text and "1 h 30 min" in text
    assert "## Limitations" in text


def test_card_without_optional_facts(model_dir, tmp_path):
    results = {"pq": 0.2}  # no per-class PQ, hardware, time, box mAP
    (model_dir / "all_results.json").write_text(json.dumps(results))
    out = tmp_path / "dry"
    push_model_dir(model_dir, "me/x", dry_run_dir=out)
    card = ModelCard.load(out / "README.md")
    assert [r.metric_type for r in card.data.eval_results] == ["pq"]
    assert "Hardware: not recorded" in card.text and "Time: not recorded" in card.text
    assert "| 0 | excavator | thing | – |" in card.text


def test_card_threshold_is_the_one_saved_with_the_model(model_dir, tmp_path):
    """The card's snippets use the threshold that produced the metrics (config.json), not a fixed 0.85."""
    _edit_config(model_dir, panoptic_postprocess={"threshold": 0.3, "mask_threshold": 0.5})
    push_model_dir(model_dir, "me/x", dry_run_dir=tmp_path / "saved")
    text = (tmp_path / "saved" / "README.md").read_text()
    expected = "threshold=0.3, mask_threshold=0.5, overlap_mask_area_threshold=0.8"  # the rest: training_config
    assert f'segmenter("site.jpg", {expected})' in text and "outputs, threshold=0.3," in text
    # An older folder without it: the training config's eval threshold.
    _edit_config(model_dir, panoptic_postprocess=None)
    (model_dir / "training_config.yaml").write_text("eval:\n  threshold: 0.45\n")
    push_model_dir(model_dir, "me/x", dry_run_dir=tmp_path / "yaml")
    assert 'segmenter("site.jpg", threshold=0.45)' in (tmp_path / "yaml" / "README.md").read_text()


def test_cli_accepts_model_dir_as_a_hidden_alias_of_model(trained, tmp_path):
    out = tmp_path / "dry"
    assert push_cli.main(["--model-dir", str(trained), "--repo-id", "me/detr-site", "--dry-run", str(out)]) == 0
    assert (out / "README.md").is_file()
    help_text = push_cli.build_parser().format_help()
    assert "--model MODEL" in help_text and "--model-dir" not in help_text  # the common name, alias hidden


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "all_results.json").unlink(), "all_results.json"),
        (lambda d: (d / "training_config.yaml").unlink(), "training_config.yaml"),
        (lambda d: (d / "preprocessor_config.json").unlink(), "preprocessor_config.json"),
        (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda d: _edit_config(d, label2id={"excavator": 1, "person": 0, "wall": 2, "sky": 3}), "mirror"),
        (lambda d: _edit_config(d, id2label=None), "id2label"),
        (lambda d: _edit_config(d, stuff_label_ids=None), "stuff_label_ids"),
        (lambda d: _edit_config(d, stuff_label_ids=[7]), "not labels"),
        (lambda d: (d / "all_results.json").write_text("{}"), "'pq'"),
        (lambda d: (d / "config.json").write_text("{not json"), "malformed JSON"),
    ],
)
def test_invalid_folder_is_a_clear_error_and_nothing_is_uploaded(model_dir, tmp_path, breakage, message):
    breakage(model_dir)
    recorder = RecordingApi()
    with pytest.raises(ModelFolderError, match=message):
        push_model_dir(model_dir, "me/x", api=recorder)
    assert recorder.calls == []
    out = tmp_path / "dry"
    assert push_cli.main(["--model", str(model_dir), "--repo-id", "me/x", "--dry-run", str(out)]) == 1
    assert not out.exists()


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_repo_id(trained):
    with pytest.raises(ModelFolderError, match="repo-id"):
        push_model_dir(trained, "no slash", api=RecordingApi())


def test_upload_is_one_commit_with_the_right_arguments(trained):
    api = RecordingApi()
    url = push_model_dir(
        trained, "me/detr-site", private=True, revision="v1", commit_message="first model", api=api
    )
    assert url.endswith("abc123")
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create = api.calls[0][1]
    assert create == {"repo_id": "me/detr-site", "repo_type": "model", "private": True, "exist_ok": True}
    assert api.calls[1][1]["branch"] == "v1"
    upload = api.calls[2][1]
    assert upload["repo_id"] == "me/detr-site" and upload["repo_type"] == "model"
    assert upload["revision"] == "v1" and upload["commit_message"] == "first model"
    assert set(upload["files"]) == UPLOADED


def test_upload_defaults_to_main_public_and_a_descriptive_message(trained):
    api = RecordingApi()
    push_model_dir(trained, "me/detr-site", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["private"] is False
    assert api.calls[1][1]["revision"] is None
    assert api.calls[1][1]["commit_message"] == "Upload detr-site (PQ 0.432)"


def _http_error(status: int):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError("refused", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (lambda: _http_error(401), "refused the upload"),
        (lambda: _http_error(500), "upload to me/x failed"),
        (lambda: ConnectionError("no route to host"), "cannot reach"),
    ],
)
def test_network_and_auth_failures_are_clear_errors(trained, error, message, monkeypatch, capsys, caplog):
    secret = "hf_THISISASECRETTOKEN"
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(HubUploadError, match=message):
        push_model_dir(trained, "me/x", api=RecordingApi(fail_with=error()))
    monkeypatch.setattr(push_to_hub, "HfApi", lambda: RecordingApi(fail_with=error()))
    monkeypatch.setattr(push_to_hub, "get_token", lambda: secret)
    assert push_cli.main(["--model", str(trained), "--repo-id", "me/x"]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text


def test_missing_token_and_offline_mode_are_clear_errors(trained, monkeypatch):
    monkeypatch.setattr(push_to_hub, "get_token", lambda: None)
    with pytest.raises(HubUploadError, match="hf auth login"):
        push_model_dir(trained, "me/x")
    # A real HfApi under HF_HUB_OFFLINE=1 (set by conftest): refused before any request.
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUploadError):
        push_model_dir(trained, "me/x", api=HfApi(token="hf_fake"))


def test_runs_as_a_file(repo_root):
    proc = subprocess.run(
        [sys.executable, str(repo_root / "push_to_hub.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=repo_root / "tests",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run" in proc.stdout


def test_recorder_refuses_arguments_the_real_hfapi_does_not_take():
    """The recorder binds each call against `HfApi`'s signature: a renamed argument cannot pass unnoticed."""
    api = RecordingApi()
    with pytest.raises(TypeError, match="privat"):
        api.create_repo(repo_id="me/x", privat=True)  # a misspelt keyword
    with pytest.raises(TypeError, match="folder_path"):
        api.upload_folder(repo_id="me/x", folder="/tmp")  # huggingface_hub's name is folder_path
    with pytest.raises(TypeError):
        api.create_branch(repo_id="me/x")  # branch is required
    assert api.calls == []
    api.create_repo("me/x", private=True)  # positional arguments are bound by name
    assert api.calls == [("create_repo", {"repo_id": "me/x", "private": True})]
