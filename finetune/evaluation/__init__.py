"""Scoring: panoptic quality (panopticapi-exact), box mAP (pycocotools), the evaluation loop of training."""
