"""The model: loading `DetrForSegmentation` (Hub / local / random init, class-head warm start) and the two stages.

- `finetune.modeling.loading`: `load_model`, the label space, `TINY_DETR_ARCHITECTURE`, from-scratch init.
- `finetune.modeling.stages`: what each stage trains, freezes and computes as its loss.
"""

from finetune.modeling.loading import TINY_DETR_ARCHITECTURE, ModelUnavailableError, label_space, load_model

__all__ = ["TINY_DETR_ARCHITECTURE", "ModelUnavailableError", "label_space", "load_model"]
