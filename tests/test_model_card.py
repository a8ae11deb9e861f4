"""The model card tells the truth about the run: start point, hardware, time per stage, learning rates
actually used, limitations that follow from the numbers, the checkpoint's post-processing settings."""

from __future__ import annotations

import re

import pytest

from finetune.config import TrainingConfig
from finetune.hub import model_card
from finetune.hub.model_card import INFERENCE_COST, build_model_card

CONFIG = {
    "id2label": {"0": "excavator", "1": "person", "2": "wall"},
    "stuff_label_ids": [2],
    "num_queries": 10,
    "panoptic_postprocess": {"threshold": 0.3, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8},
}


def training_config(**model) -> dict:
    config = TrainingConfig()
    config.detection.backbone_lr, config.masks.backbone_lr = 0.0, 1e-5
    for key, value in model.items():
        setattr(config.model, key, value)
    return config.to_dict()


def stage(epochs: int, planned: int, train_seconds: float, eval_seconds: float, stopped: bool = False) -> dict:
    return {"epochs": epochs, "planned_epochs": planned, "stopped_early": stopped, "train_seconds": train_seconds,
            "eval_seconds": eval_seconds}


def facts(kind: str, name: str | None, **extra) -> dict:
    """`train_results.json` as `finetune.training.export.run_facts` writes it."""
    stages = {"detection": stage(50, 50, 3600.0, 125.0), "masks": stage(25, 25, 60.0, 5.0)}
    return {
        "started_from": {"kind": kind, "name": name, "config_overrides": {"backbone": "resnet18", "d_model": 64}},
        "hardware": "NVIDIA H200",
        "num_processes": 2,
        "mixed_precision": "bf16",
        "stages": stages,
        "train_runtime": 3660.0,
        "eval_runtime": 130.0,
        "train_samples": 21,
        "eval_samples": 7,
        **extra,
    }


def stage_line(text: str, stage: str) -> str:
    return next(line for line in text.splitlines() if f"**{stage}**" in line)


def card_text(results: dict, train_config: dict, train_facts: dict | None) -> str:
    return build_model_card(CONFIG, train_config, results, "me/detr-x", train_facts=train_facts).content


def test_random_init_card_says_so_and_derives_limitations_from_the_numbers():
    results = {"pq": 0.32, "pq_things": 0.0, "pq_stuff": 0.65, "per_class_pq": {"excavator": 0.0, "wall": 0.7}}
    text = card_text(results, training_config(model_name_or_path=None), facts("random_init", None))
    assert "fine-tuned" not in text.split("## Results")[0]
    assert "trained from scratch" in text
    assert "Started from: a random initialisation (no pretrained weights; DetrConfig backbone resnet18, d_model 64)" in text
    assert "base_model" not in text.split("---")[1]  # no Hub base model in the metadata
    limitations = text.split("## Limitations")[1]
    assert "Things are segmented much worse than stuff: PQ things 0.000 vs PQ stuff 0.650" in limitations
    assert "excavator (0.00)" in limitations and "demonstration" in limitations
    assert "usually lower" not in limitations  # the old fixed sentence that these numbers contradict


def test_stuff_worse_than_things_is_stated_the_other_way_round():
    results = {"pq": 0.5, "pq_things": 0.6, "pq_stuff": 0.2}
    text = card_text(results, training_config(), facts("hub", "facebook/detr-resnet-50-panoptic"))
    assert "Stuff are segmented much worse than things: PQ stuff 0.200 vs PQ things 0.600" in text


def test_hub_start_hardware_time_per_stage_and_the_learning_rates_actually_used():
    base = "facebook/detr-resnet-50-panoptic"
    text = card_text({"pq": 0.5}, training_config(model_name_or_path=base), facts("hub", base))
    assert f"Started from: the Hub checkpoint [`{base}`]" in text
    assert "Hardware: NVIDIA H200 × 2 process(es), mixed precision bf16" in text
    assert (
        "Time: 1 h 01 min training + 2 min 10 s evaluation (detection 1 h 00 min + 2 min 05 s; "
        "masks 1 min 00 s + 0 min 05 s)"
    ) in text
    detection, masks = stage_line(text, "detection"), stage_line(text, "masks")
    assert "backbone frozen" in detection and "backbone lr" not in detection  # backbone_lr 0
    assert "backbone lr" not in masks  # the masks stage freezes the backbone whatever backbone_lr says
    assert "21 images" in text and "7 images" in text
    assert "lr 0.0001 (×0.1 after epoch 34)" in detection  # TrainingConfig(): 50 epochs, drop at 2/3


def test_local_start_and_unrecorded_facts():
    config = training_config(model_name_or_path="outputs/run/final")
    assert "Started from: the local checkpoint `outputs/run/final`" in card_text(
        {"pq": 0.5}, config, facts("local", "outputs/run/final")
    )
    text = card_text({"pq": 0.5}, config, None)
    assert "Started from: the checkpoint `outputs/run/final` (Hub id or local folder: not recorded)" in text
    assert "Hardware: not recorded" in text and "Time: not recorded" in text


@pytest.mark.parametrize("backbone_lr", [1e-5])
def test_a_trained_backbone_reports_its_lr(backbone_lr):
    config = training_config()
    config["detection"]["backbone_lr"] = backbone_lr
    text = card_text({"pq": 0.5}, config, None)
    detection = next(line for line in text.splitlines() if "**detection**" in line)
    assert f"backbone lr {backbone_lr:g}" in detection


def test_pipeline_snippet_passes_the_checkpoint_postprocessing_settings():
    text = card_text({"pq": 0.5}, training_config(), None)
    call = re.search(r'segmenter\("site.jpg", ([^)]*)\)', text)
    assert call and call.group(1) == "threshold=0.3, mask_threshold=0.5, overlap_mask_area_threshold=0.8"


def test_usage_offers_the_cheap_path_first_with_its_measured_cost():
    text = card_text({"pq": 0.5}, training_config(), None)
    assert text.index("PanopticPredictor.from_pretrained") < text.index('pipeline("image-segmentation"')
    assert INFERENCE_COST["predictor"] in text and INFERENCE_COST["pipeline"] in text


def test_the_card_says_which_stages_ran():
    """A `--stages detection` run trained no mask head: the card must not say it did (it used to describe two
    stages whatever ran)."""
    config = training_config()
    config["run"]["stages"] = ["detection"]
    only_boxes = facts("hub", "facebook/detr-resnet-50-panoptic", stages={"detection": stage(50, 50, 60.0, 6.0)})
    text = card_text({"box_map": 0.3}, config, only_boxes)
    intro = text.split("## Results")[0]
    assert "two stages" not in intro and "in one stage, `detection`: the box model only" in intro
    assert "mask head was not trained" in intro
    assert "**masks**" not in text and "Stage 1, **detection**" in text

    config["run"]["stages"] = ["masks"]
    only_masks = facts("local", "outputs/run/final", stages={"masks": stage(25, 25, 60.0, 6.0)})
    intro = card_text({"pq": 0.4}, config, only_masks).split("## Results")[0]
    assert "in one stage, `masks`: the mask head only" in intro and "two stages" not in intro

    # A folder without run records: the configured stages, as configured.
    config["run"]["stages"] = ["detection"]
    assert "in one stage, `detection`" in card_text({"pq": 0.4}, config, None)


def test_an_early_stopped_stage_reports_the_epochs_it_trained_and_the_lr_it_used():
    """50 epochs configured, the lr drop after epoch 34: stopped after 12, the drop never happened."""
    stopped = facts("hub", "facebook/detr-resnet-50-panoptic")
    stopped["stages"]["detection"] = stage(12, 50, 600.0, 60.0, stopped=True)
    text = card_text({"pq": 0.5}, training_config(), stopped)
    detection = stage_line(text, "detection")
    assert "12 of 50 epochs (early stopping)" in detection
    assert "lr 0.0001 (constant: the ×0.1 drop after epoch 34 was not reached)" in detection
    assert "25 epochs" in stage_line(text, "masks") and "early stopping" not in stage_line(text, "masks")


def test_the_lr_text_names_every_drop_of_the_step_schedule():
    """StepLR drops every `lr_drop_epochs`: 10 of 35 epochs -> after 10, 20 and 30."""
    config = training_config()
    config["detection"].update(lr_drop_epochs=10, epochs=35)
    run = facts("hub", "facebook/detr-resnet-50-panoptic")
    run["stages"]["detection"] = stage(35, 35, 600.0, 60.0)
    assert "lr 0.0001 (×0.1 after epochs 10, 20, 30)" in stage_line(card_text({"pq": 0.5}, config, run), "detection")


def test_a_folder_without_run_records_says_the_epochs_are_only_configured():
    detection = stage_line(card_text({"pq": 0.5}, training_config(), None), "detection")
    assert "50 epochs configured (epochs trained not recorded)" in detection


def test_the_masks_stage_says_bbox_attention_trains_too():
    masks = stage_line(card_text({"pq": 0.5}, training_config(), facts("hub", "x/y")), "masks")
    assert "mask head only" not in masks
    assert "`mask_head`" in masks and "`bbox_attention`" in masks
    assert "`bbox_attention` frozen" in stage_line(card_text({"pq": 0.5}, training_config(), None), "detection")


def test_older_records_label_their_time_as_evaluation_included():
    old = facts("hub", "x/y")
    del old["stages"], old["eval_runtime"]
    old.update(stage_runtime={"detection": 3725.0, "masks": 65.0}, train_runtime=3790.0)
    text = card_text({"pq": 0.5}, training_config(), old)
    assert "Time: 1 h 03 min of training, evaluation included (detection 1 h 02 min, masks 1 min 05 s)" in text


def test_the_start_point_does_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    """The card used to call `name` a Hub id unless a folder of that name existed *where the card was built*."""
    base = "facebook/detr-resnet-50-panoptic"
    config = training_config(model_name_or_path=base)
    monkeypatch.chdir(tmp_path)
    elsewhere = {kind: card_text({"pq": 0.5}, config, facts(kind, base)) for kind in ("hub", "local")}
    unrecorded = card_text({"pq": 0.5}, config, None)
    (tmp_path / base).mkdir(parents=True)  # a folder of that name in the current directory
    assert {kind: card_text({"pq": 0.5}, config, facts(kind, base)) for kind in ("hub", "local")} == elsewhere
    assert card_text({"pq": 0.5}, config, None) == unrecorded
    assert f"base_model: {base}" in elsewhere["hub"].split("---")[1]
    assert "base_model" not in elsewhere["local"].split("---")[1]
    # Without a record the kind is unknown: no base model, and the card says so rather than guessing.
    assert "base_model" not in unrecorded.split("---")[1]
    assert f"the checkpoint `{base}` (Hub id or local folder: not recorded)" in unrecorded


def test_limitations_use_the_named_thresholds(monkeypatch):
    results = {"pq": 0.35, "pq_things": 0.30, "pq_stuff": 0.40, "per_class_pq": {"excavator": 0.2, "wall": 0.6}}
    limitations = card_text(results, training_config(), facts("hub", "x/y")).split("## Limitations")[1]
    assert "Classes with PQ below" not in limitations and "Overall PQ" not in limitations
    monkeypatch.setattr(model_card, "WEAK_CLASS_PQ", 0.25)
    monkeypatch.setattr(model_card, "LOW_OVERALL_PQ", 0.4)
    monkeypatch.setattr(model_card, "THINGS_STUFF_GAP", 0.2)
    limitations = card_text(results, training_config(), facts("hub", "x/y")).split("## Limitations")[1]
    assert "Classes with PQ below 0.25, mostly missed or wrong: excavator (0.20)." in limitations
    assert "Overall PQ 0.350" in limitations and "segmented much worse" not in limitations
