"""The training configuration: YAML + CLI parsing, precedence, validation errors, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune.config import (
    ConfigError,
    TrainingConfig,
    load_config_file,
    parse_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "finetune" / "configs"


def write_yaml(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["default.yaml", "quickstart.yaml", "from_scratch.yaml", "tiny_pretrain.yaml", "ci.yaml"])
def test_bundled_configs_parse_and_validate(name):
    config = parse_config(["--config", str(CONFIGS / name)])
    assert config.run.stages == ["detection", "masks"]


def test_default_recipe_values():
    config = parse_config(["--config", str(CONFIGS / "default.yaml")])
    assert config.model.model_name_or_path == "facebook/detr-resnet-50-panoptic"
    assert config.detection.lr == pytest.approx(1e-4) and config.detection.backbone_lr == pytest.approx(1e-5)
    assert config.detection.weight_decay == pytest.approx(
        1e-4
    ) and config.detection.max_grad_norm == pytest.approx(0.1)
    assert config.masks.epochs == 25
    assert (
        config.data.max_size == 1333
        and min(config.data.train_scales) == 480
        and max(config.data.train_scales) == 800
    )


def test_yaml_values_and_cli_override_precedence(tmp_path):
    path = write_yaml(
        tmp_path,
        {
            "detection": {"epochs": 7, "lr": 3e-4},
            "run": {"seed": 5, "output_dir": "from_yaml"},
            "data": {"num_workers": 1},
        },
    )
    config = parse_config(
        ["--config", str(path), "--detection_epochs", "9", "--output_dir", "from_cli", "--masks_lr", "2e-5"]
    )
    assert config.detection.epochs == 9  # CLI beats YAML
    assert config.detection.lr == pytest.approx(3e-4)  # YAML beats default
    assert config.masks.lr == pytest.approx(2e-5)
    assert config.run.output_dir == "from_cli"
    assert config.run.seed == 5
    assert config.data.num_workers == 1
    assert config.masks.epochs == TrainingConfig().masks.epochs  # untouched default


def test_cli_types_lists_dicts_bools_and_null():
    config = parse_config(
        [
            "--stages",
            "masks",
            "--report_to",
            "tensorboard,wandb",
            "--train_scales",
            "64,96",
            "--model_name_or_path",
            "null",
            "--config_overrides",
            '{"d_model": 64, "num_queries": 5}',
            "--push_to_hub",
            "--hub_model_id",
            "me/model",
            "--masks_max_grad_norm",
            "none",
            "--pin_memory",
            "false",
            "--resume_from_checkpoint",
            "latest",
        ]
    )
    assert config.run.stages == ["masks"]
    assert config.logging.report_to == ["tensorboard", "wandb"]
    assert config.data.train_scales == [64, 96]
    assert config.model.model_name_or_path is None
    assert config.model.config_overrides == {"d_model": 64, "num_queries": 5}
    assert config.hub.push_to_hub is True and config.hub.hub_model_id == "me/model"
    assert config.masks.max_grad_norm is None
    assert config.data.pin_memory is False
    assert config.run.resume_from_checkpoint == "latest"


def test_json_config_file(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"masks": {"epochs": 3}}), encoding="utf-8")
    assert parse_config(["--config", str(path)]).masks.epochs == 3


@pytest.mark.parametrize(
    ("data", "argv", "message"),
    [
        ({"detection": {"epoch": 3}}, [], "unknown key(s) ['epoch'] in section 'detection'"),
        ({"optimizer": {}}, [], "unknown section(s) ['optimizer']"),
        ({"detection": {"lr": 0}}, [], "detection.lr must be a positive number"),
        ({"masks": {"lr": -1e-4}}, [], "masks.lr must be a positive number"),
        ({"detection": {"backbone_lr": -1e-5}}, [], "detection.backbone_lr must be >= 0"),
        ({"detection": {"epochs": "many"}}, [], "detection.epochs must be of type"),
        ({}, ["--stages", "boxes"], "unknown stage(s) ['boxes']"),
        ({}, ["--stages", "masks,detection"], "must be distinct and in the order"),
        ({}, ["--mixed_precision", "fp64"], "run.mixed_precision must be one of"),
        ({}, ["--push_to_hub"], "needs hub.hub_model_id"),
        ({}, ["--detection_epochs", "x"], "--detection_epochs: expected int"),
        ({}, ["--config_overrides", "[1]"], "expected a JSON object"),
        ({}, ["--model_name_or_path", "null"], "config_overrides must describe the DetrConfig"),
        ({}, ["--no_such_flag", "1"], "unknown command-line argument"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, data, argv, message):
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        parse_config(["--config", str(path), *argv])
    assert message in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(["--config", str(tmp_path / "nope.yaml")])


def test_round_trip_through_training_config_yaml(tmp_path):
    config = parse_config(
        [
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--detection_epochs",
            "4",
            "--class_map",
            '{"wall": "wall-other"}',
        ]
    )
    config.save(tmp_path / "training_config.yaml")
    assert load_config_file(tmp_path / "training_config.yaml") == config.to_dict()
    # A saved config is a valid --config file, giving back the same configuration.
    assert parse_config(["--config", str(tmp_path / "training_config.yaml")]) == config


def test_unknown_detr_config_field_is_an_error_with_close_matches(tmp_path):
    path = write_yaml(
        tmp_path,
        {"model": {"model_name_or_path": None, "config_overrides": {"d_modle": 64, "bogus_detr_field": 3}}},
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(["--config", str(path)])
    message = str(caught.value)
    assert "model.config_overrides: unknown DetrConfig field(s)" in message
    assert "'bogus_detr_field' (close matches: none)" in message
    assert "'d_modle' (close matches: d_model" in message
    assert "\n" not in message
    # Backbone keywords and attribute_map aliases are DetrConfig settings too.
    overrides = {"backbone": "resnet18", "use_timm_backbone": True, "hidden_size": 64, "dilation": True}
    config = parse_config(["--config", str(path), "--config_overrides", json.dumps(overrides)])
    assert config.model.config_overrides == overrides


def _val_images(panoptic_dir: Path) -> list[str]:
    annotations = json.loads((panoptic_dir / "annotations" / "panoptic_val.json").read_text(encoding="utf-8"))
    return sorted(image["file_name"] for image in annotations["images"])


def test_sample_split_follows_split_seed_not_training_seed(tmp_path):
    """The auto-converted sample has the split of `make convert-sample`, whatever `run.seed` is."""
    from accelerate import PartialState

    from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
    from finetune.data.source import REPO_ROOT, convert_sample

    PartialState()  # the accelerate logger of dataset_source needs it (one CPU process here)

    # The Makefile's convert-sample: --stuff-labels floor wall sky ground --val-ratio 0.25 --seed 0
    exports = [
        REPO_ROOT / "sample_data" / "cvat_task_materials",
        REPO_ROOT / "sample_data" / "cvat_task_machines",
    ]
    options = ConversionOptions(stuff_labels=("floor", "wall", "sky", "ground"), val_ratio=0.25, seed=0)
    convert_exports(exports, tmp_path / "make_convert_sample", options)
    expected = _val_images(tmp_path / "make_convert_sample")

    splits = {}
    for name, argv in [
        ("default", ["--config", str(CONFIGS / "default.yaml")]),  # run.seed 42
        ("quickstart", ["--config", str(CONFIGS / "quickstart.yaml")]),  # run.seed 0
        ("seed7", ["--config", str(CONFIGS / "quickstart.yaml"), "--seed", "7"]),
        ("split1", ["--config", str(CONFIGS / "quickstart.yaml"), "--split_seed", "1"]),
    ]:
        config = parse_config(argv)
        assert config.data.dataset_dir is None
        splits[name] = _val_images(convert_sample(config.data, tmp_path / name))
    assert splits["default"] == splits["quickstart"] == splits["seed7"] == expected
    assert len(expected) == 7  # a quarter of the 28 sample images
    assert splits["split1"] != expected  # the split seed is what chooses the split


def test_sample_conversion_is_kept_for_later_runs(tmp_path):
    from accelerate import PartialState

    from finetune.data.source import convert_sample

    PartialState()

    data = parse_config(["--config", str(CONFIGS / "quickstart.yaml")]).data
    first = convert_sample(data, tmp_path)
    report = (first / "report.json").stat().st_mtime_ns
    data.split_seed = 1  # a finished conversion is reused (resumes keep their evaluation set)
    assert convert_sample(data, tmp_path) == first and (first / "report.json").stat().st_mtime_ns == report


@pytest.mark.parametrize("value", ["none", "None"])
def test_report_to_none_means_no_tracker(value):
    """transformers' `--report_to none`: accelerate itself would stop on it with a traceback."""
    assert parse_config(["--report_to", value]).logging.report_to == []


def test_the_nan_testing_aid_is_no_user_setting_but_old_saved_configs_still_load(tmp_path, caplog):
    """`run.debug_nan_loss_at_step` was a test hook in the user's configuration; the tests now inject the NaN
    themselves (`tests/faulty_train.py`). A `training_config.yaml` saved before still is a valid --config."""
    with pytest.raises(ConfigError, match="debug_nan_loss_at_step"):
        parse_config(["--debug_nan_loss_at_step", "3"])
    saved = TrainingConfig().to_dict()
    saved["run"]["debug_nan_loss_at_step"] = None  # as configs saved before the field was removed have it
    with caplog.at_level("WARNING"):
        config = parse_config(["--config", str(write_yaml(tmp_path, saved))])
    assert config == TrainingConfig().validate()
    assert "ignored key(s) ['debug_nan_loss_at_step'] of section 'run', no longer used" in caplog.text
    # Any other unknown key is still an error.
    saved["run"]["debug_nan_loss_at_stpe"] = 3
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(["--config", str(write_yaml(tmp_path, saved))])


def test_the_shipped_checkpoint_config_is_a_valid_config():
    shipped = CONFIGS.parents[1] / "pretrained" / "tiny-detr-panoptic" / "training_config.yaml"
    assert parse_config(["--config", str(shipped)]).model.config_overrides
