"""Box mAP (COCO AP@[.5:.95], AP50, AP75) accumulated image by image, scored with pycocotools.

`BoxMapAccumulator` keeps plain Python lists per image, so its state pickles and travels through
``accelerate.utils.gather_object``; `compute` builds the COCO ground truth and detections in
memory (no files) and runs ``COCOeval`` on them. Crowd GT boxes follow COCO's rule: a detection
matching one is ignored, neither true nor false positive.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _as_array(values: Any, columns: int | None = None, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    array = array.reshape(-1, columns) if columns is not None else array.reshape(-1)
    return array


class BoxMapAccumulator:
    """Collects GT and predicted boxes per image; `compute` gives COCO box mAP.

    Args:
        categories: Dicts with ``id`` (COCO category id) and ``name``; predictions and GT use
            these ids.

    Example:
        >>> acc = BoxMapAccumulator([{"id": 1, "name": "crane"}])
        >>> acc.update(0, [[10, 10, 50, 60]], [0.9], [1], [[10, 10, 40, 50]], [1], [0], 100, 100)
        >>> acc.compute()["map"]
        1.0
    """

    def __init__(self, categories: Sequence[dict[str, Any]]):
        self.categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]
        self._category_ids = {c["id"] for c in self.categories}
        # image_id -> {"height", "width", "gt": [[x, y, w, h, category, iscrowd]], "pred": [[x, y, w, h, score, category]]}
        self.images: dict[int, dict[str, Any]] = {}

    def update(
        self,
        image_id: int,
        pred_boxes_xyxy: Any,
        pred_scores: Any,
        pred_category_ids: Any,
        gt_boxes_xywh: Any,
        gt_category_ids: Any,
        gt_iscrowd: Any,
        height: int,
        width: int,
    ) -> None:
        """Add one image (numpy arrays, torch tensors or lists).

        Args:
            image_id: Unique per image; adding the same image again replaces it (distributed
                samplers repeat images to fill the last batch).
            pred_boxes_xyxy: ``(M, 4)`` predicted boxes in pixels, ``x0, y0, x1, y1``.
            pred_scores: ``(M,)`` confidences.
            pred_category_ids: ``(M,)`` COCO category ids.
            gt_boxes_xywh: ``(N, 4)`` GT boxes in pixels, ``x, y, w, h`` (COCO).
            gt_category_ids: ``(N,)`` COCO category ids.
            gt_iscrowd: ``(N,)`` 0/1.
            height, width: Image size in pixels.
        """
        pred = _as_array(pred_boxes_xyxy, 4)
        scores = _as_array(pred_scores)
        pred_cats = _as_array(pred_category_ids, dtype=np.int64)
        gt = _as_array(gt_boxes_xywh, 4)
        gt_cats = _as_array(gt_category_ids, dtype=np.int64)
        crowd = _as_array(gt_iscrowd, dtype=np.int64)
        if not (len(pred) == len(scores) == len(pred_cats)):
            raise ValueError(
                f"image {image_id}: {len(pred)} predicted boxes, {len(scores)} scores, {len(pred_cats)} categories"
            )
        if not (len(gt) == len(gt_cats) == len(crowd)):
            raise ValueError(
                f"image {image_id}: {len(gt)} GT boxes, {len(gt_cats)} categories, {len(crowd)} crowd flags"
            )
        unknown = sorted(set(pred_cats.tolist() + gt_cats.tolist()) - self._category_ids)
        if unknown:
            raise ValueError(
                f"image {image_id}: unknown category id(s) {unknown} (known: {sorted(self._category_ids)})"
            )
        pred_xywh = np.concatenate([pred[:, :2], pred[:, 2:] - pred[:, :2]], axis=1)
        self.images[int(image_id)] = {
            "height": int(height),
            "width": int(width),
            "gt": [[*map(float, box), int(c), int(k)] for box, c, k in zip(gt, gt_cats, crowd, strict=True)],
            "pred": [
                [*map(float, box), float(s), int(c)]
                for box, s, c in zip(pred_xywh, scores, pred_cats, strict=True)
            ],
        }

    def state(self) -> dict[int, dict[str, Any]]:
        """Picklable state (plain dicts and lists) for ``accelerate.utils.gather_object``."""
        return self.images

    def merge(self, other: BoxMapAccumulator | dict[int, dict[str, Any]]) -> BoxMapAccumulator:
        """Add another accumulator's images (or its `state`); returns self."""
        images = other.images if isinstance(other, BoxMapAccumulator) else other
        self.images.update(images)
        return self

    def __len__(self) -> int:
        return len(self.images)

    def compute(self) -> dict[str, float]:
        """``{"map", "map_50", "map_75"}`` in [0, 1] (COCOeval ``bbox``, maxDets 100).

        Zero predictions or zero (non-crowd) GT boxes give 0.0 instead of COCO's -1.
        """
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        zero = {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
        images, gt_anns, detections = [], [], []
        for image_id, item in self.images.items():
            images.append({"id": image_id, "height": item["height"], "width": item["width"]})
            for x, y, w, h, cat, crowd in item["gt"]:
                gt_anns.append(
                    {
                        "id": len(gt_anns) + 1,
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": crowd,
                    }
                )
            for x, y, w, h, score, cat in item["pred"]:
                detections.append(
                    {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": score}
                )
        if not detections or not any(not ann["iscrowd"] for ann in gt_anns):
            logger.info("box mAP: %d predictions, %d GT boxes: reporting 0", len(detections), len(gt_anns))
            return zero

        quiet = io.StringIO()  # pycocotools prints its progress and table
        with contextlib.redirect_stdout(quiet):
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": self.categories}
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(detections)
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        logger.debug("COCOeval:\n%s", quiet.getvalue())
        stats = evaluator.stats
        return {
            key: max(float(value), 0.0)
            for key, value in zip(("map", "map_50", "map_75"), stats[:3], strict=False)
        }
