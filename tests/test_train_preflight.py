"""Fail fast: the model source, the output folder and (with --push_to_hub) the Hub token and repo are checked
before any data work; each failure is one line, exit status 1, and nothing is converted or trained."""

from __future__ import annotations

import json
import logging
import os

import pytest

from finetune import train
from finetune.hub import push
from finetune.modeling.loading import ModelUnavailableError
from finetune.training.preflight import OutputDirError, check_model_source, check_output_dir
from tests.hub_recorder import RecordingApi
from tests.tiny_checkpoints import save_tiny_checkpoint
from tests.train_runs import CI_CONFIG


def test_a_trained_checkpoint_folder_and_a_random_init_pass(tmp_path):
    check_model_source(str(save_tiny_checkpoint(tmp_path / "final")))
    check_model_source(None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no config.json"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert"})), "not a DETR"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json is unreadable"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "detr"})), "no weights"),
    ],
)
def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path, make, message):
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    with pytest.raises(ModelUnavailableError, match=message):
        check_model_source(str(folder))


def test_a_missing_path_and_an_unreachable_hub_id_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailableError, match="no such checkpoint folder") as missing:
        check_model_source(str(tmp_path / "runs" / "final"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))  # nothing cached
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set") as offline:
        check_model_source("someone/not-cached-detr")
    for error in (missing.value, offline.value):
        assert "\n" not in str(error)
    assert "quickstart.yaml" in str(offline.value)


def test_output_dir_blocked_by_a_file(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputDirError, match="is a file"):
        check_output_dir(tmp_path / "taken" / "run")
    check_output_dir(tmp_path / "new" / "run")  # creatable: fine, and not created by the check
    assert not (tmp_path / "new").exists()


def test_output_dir_not_writable(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders (CI runs as root): the OS refusal is simulated

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("finetune.training.preflight.tempfile.TemporaryFile", refuse)
    try:
        with pytest.raises(OutputDirError, match="not writable"):
            check_output_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def _http_error(status: int):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError("refused", response=httpx2.Response(status, request=request))


def _main_error(argv, caplog) -> str:
    assert train.main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


@pytest.mark.parametrize(
    ("token", "api", "message"),
    [
        (None, RecordingApi(), "no Hugging Face token"),
        ("hf_test", RecordingApi(fail_with=_http_error(403)), "refused the creation of the repository me/detr"),
    ],
)
def test_push_to_hub_without_token_or_repo_stops_before_any_data_work(
    tmp_path, monkeypatch, caplog, fresh_accelerate_state, token, api, message
):
    monkeypatch.setattr(push, "get_token", lambda: token)
    monkeypatch.setattr(push, "HfApi", lambda: api)
    out = tmp_path / "run"
    argv = ["--config", str(CI_CONFIG), "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/detr"]
    error = _main_error(argv, caplog)
    assert message in error and "nothing trained" in error
    assert not out.exists()  # no dataset converted, no checkpoint


def test_push_to_hub_creates_the_repo_before_any_data_work(tmp_path, monkeypatch, fresh_accelerate_state):
    """HF Trainer's check: the (empty) repo is created up front, before the dataset is built."""
    from finetune.modeling.loading import ModelSetupError
    from finetune.training import run

    api = RecordingApi()
    monkeypatch.setattr(push, "get_token", lambda: "hf_test")
    monkeypatch.setattr(push, "HfApi", lambda: api)
    calls_at_build = []

    def stop(*args, **kwargs):
        calls_at_build.extend(name for name, _ in api.calls)
        raise ModelSetupError("stopped at build_run")

    monkeypatch.setattr(run, "build_run", stop)
    argv = ["--config", str(CI_CONFIG), "--output_dir", str(tmp_path / "run")]
    assert train.main([*argv, "--push_to_hub", "--hub_model_id", "me/detr", "--hub_private"]) == 1
    assert calls_at_build == ["create_repo"]
    assert api.calls[0][1] == {"repo_id": "me/detr", "repo_type": "model", "private": True, "exist_ok": True}


def test_bad_model_stops_before_the_dataset_is_built(tmp_path, caplog, fresh_accelerate_state):
    out = tmp_path / "run"
    error = _main_error(["--config", str(CI_CONFIG), "--output_dir", str(out), "--model", "./no/such/model"], caplog)
    assert "no such checkpoint folder" in error
    assert not out.exists()


def test_output_dir_blocked_stops_with_one_line(tmp_path, caplog, fresh_accelerate_state):
    (tmp_path / "taken").write_text("a file")
    error = _main_error(["--config", str(CI_CONFIG), "--output_dir", str(tmp_path / "taken" / "run")], caplog)
    assert "OutputDirError" in error and "is a file" in error
