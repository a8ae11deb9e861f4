"""Data side of detr-panoptic: CVAT exports -> COCO-panoptic folders -> Hugging Face `datasets`."""
