"""The model card tells the truth about the run: start point, hardware, time per stage, learning rates
actually used, limitations that follow from the numbers, the checkpoint's post-processing settings."""

from __future__ import annotations

import re

import pytest

from finetune.config import TrainingConfig
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


def facts(kind: str, name: str | None, **extra) -> dict:
    return {
        "started_from": {"kind": kind, "name": name, "config_overrides": {"backbone": "resnet18", "d_model": 64}},
        "hardware": "NVIDIA H200",
        "num_processes": 2,
        "mixed_precision": "bf16",
        "stage_runtime": {"detection": 3725.0, "masks": 65.0},
        "train_runtime": 3790.0,
        "train_samples": 21,
        "eval_samples": 7,
        **extra,
    }


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
    assert "Training time: 1 h 03 min (detection 1 h 02 min, masks 1 min 05 s)" in text
    detection = next(line for line in text.splitlines() if "**detection**" in line)
    masks = next(line for line in text.splitlines() if "**masks**" in line)
    assert "backbone frozen" in detection and "backbone lr" not in detection  # backbone_lr 0
    assert "backbone lr" not in masks  # the masks stage freezes the backbone whatever backbone_lr says
    assert "21 images" in text and "7 images" in text
    assert "lr 0.0001 (×0.1 after epoch 34)" in detection  # TrainingConfig(): 50 epochs, drop at 2/3


def test_local_start_and_unrecorded_facts():
    text = card_text({"pq": 0.5}, training_config(model_name_or_path="outputs/run/final"), None)
    assert "Started from: the local checkpoint `outputs/run/final`" in text
    assert "Hardware: not recorded" in text and "Training time: not recorded" in text


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
