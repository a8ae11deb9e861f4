"""Training, evaluation and inference side of detr-panoptic."""
