"""Panoptic inference: the fast core, the checkpoint predictor and the label metadata of a checkpoint.

* `finetune.inference.core`: image batch in, `PanopticPrediction`s out (mask head on selected queries only);
* `finetune.inference.predictor`: `PanopticPredictor` (load a checkpoint, predict PIL images) and
  `render_overlay`;
* `finetune.inference.metadata`: label -> category ids, colours, stuff labels, post-processing settings.
"""

from finetune.inference.core import BatchOutput, PanopticPrediction, PostProcessing, predict_batch
from finetune.inference.metadata import (
    POSTPROCESS_DEFAULTS,
    LabelMismatchError,
    category_ids,
    label_color,
    label_to_category,
    postprocess_settings,
    saved_label_colors,
    stuff_label_ids,
)
from finetune.inference.predictor import ModelLoadError, PanopticPredictor, render_overlay

__all__ = [
    "POSTPROCESS_DEFAULTS",
    "BatchOutput",
    "LabelMismatchError",
    "ModelLoadError",
    "PanopticPrediction",
    "PanopticPredictor",
    "PostProcessing",
    "category_ids",
    "label_color",
    "label_to_category",
    "postprocess_settings",
    "predict_batch",
    "render_overlay",
    "saved_label_colors",
    "stuff_label_ids",
]
