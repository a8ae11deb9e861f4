"""Write a loadable model folder: `best_<stage>/` during training and `final/` at the end (interface 3).

    config.json               DetrConfig: id2label/label2id, stuff_label_ids, category_ids (label ->
                              dataset id), label_colors (label -> dataset category colour),
                              panoptic_postprocess (the eval thresholds: every inference tool's defaults)
    model.safetensors
    preprocessor_config.json  DetrImageProcessor(format="coco_panoptic"), the evaluation size of training
    training_config.yaml      the run's configuration
    all_results.json          the metrics (final: last evaluation of each stage)

`pipeline("image-segmentation", model=folder)` and `PanopticPredictor.from_pretrained(folder)` load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dataset_scripts.atomic_io import atomic_directory, atomic_write_json
from dataset_scripts.preview import palette_color
from finetune.config import TrainingConfig
from finetune.modeling.loading import label_space

RESULTS_FILE = "all_results.json"
CONFIG_FILE = "training_config.yaml"


def save_model_folder(
    model: torch.nn.Module,
    image_processor: Any,
    folder: str | Path,
    config: TrainingConfig,
    categories: list[dict],
    results: dict[str, Any] | None = None,
) -> Path:
    """Save model + processor + config (+ results) into `folder`, replacing it atomically.

    Args:
        model: the unwrapped `DetrForSegmentation` (its config already has `stuff_label_ids`).
        image_processor: the `DetrImageProcessor` used for evaluation.
        folder: target folder (built in a temporary sibling, then renamed).
        config: the training configuration.
        categories: `load_categories(...)` in label order; their ids are saved as `config.category_ids`,
            their colours as `config.label_colors` (the shared palette for a category without one).
        results: metrics for `all_results.json`.

    `config.panoptic_postprocess` records the `eval` post-processing settings, so that inference and
    evaluation of the folder later default to the settings that produced `all_results.json`.
    """
    model.config.category_ids = [int(c["id"]) for c in categories]
    model.config.stuff_label_ids = label_space(categories)[2]
    model.config.label_colors = [
        [int(v) for v in (c.get("color") or palette_color(i))][:3] for i, c in enumerate(categories)
    ]
    model.config.panoptic_postprocess = {
        "threshold": float(config.eval.threshold),
        "mask_threshold": float(config.eval.mask_threshold),
        "overlap_mask_area_threshold": float(config.eval.overlap_mask_area_threshold),
    }
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        image_processor.save_pretrained(tmp)
        config.save(Path(tmp) / CONFIG_FILE)
        if results is not None:
            atomic_write_json(Path(tmp) / RESULTS_FILE, results, indent=2)
    return Path(folder)


def final_results(last_eval: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`all_results.json`: the latest evaluation of each stage, later stages winning on shared keys.

    The masks stage evaluates box mAP too (of the same, frozen, detector), so after both stages every
    key describes the final weights.
    """
    results: dict[str, Any] = {}
    for stage in ("detection", "masks"):
        results.update(last_eval.get(stage, {}))
    return results
