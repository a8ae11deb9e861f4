"""Panoptic quality (PQ / SQ / RQ) as a Hugging Face `evaluate` metric.

Load it from this folder: ``evaluate.load("finetune/metrics/panoptic_quality")``. The numbers are
those of panopticapi's ``pq_compute``; the computation is the repo's ``finetune.evaluation.panoptic_quality``
(see README.md next to this file).

evaluate copies this file into its module cache and checks that every library imported at the
top is installed: `finetune` is, once the project is (``pip install -e .``).
"""

import datasets
import evaluate

from finetune.evaluation import panoptic_quality as core

_DESCRIPTION = """
Panoptic quality (Kirillov et al., 2019) with the semantics of panopticapi's pq_compute: segments of
the same category match at IoU > 0.5, void (id 0) ground-truth pixels are ignored, crowd regions are
never matched, and a prediction lying mostly on void or a same-class crowd region is not a false
positive. PQ = SQ x RQ per class, averaged over the classes that occur, for All, Things and Stuff.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image, the predicted (H, W) segment-id map (0 = void), e.g. a numpy array.
    references: per image, the ground-truth (H, W) segment-id map of the same size.
    prediction_segments: per image, a list of {"id", "category_id"} for every non-zero predicted id.
    reference_segments: per image, a list of {"id", "category_id", "iscrowd"} for every non-zero GT id.
    categories (compute only): list of {"id", "name", "isthing"}; e.g. load_categories(dataset).
Returns:
    {"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...},
     "per_class": {category_id: {"pq", "sq", "rq"}}}, values in [0, 1].
Example:
    >>> pq = evaluate.load("finetune/metrics/panoptic_quality")
    >>> ids = [[0, 5], [5, 5]]
    >>> pq.add_batch(predictions=[ids], references=[ids],
    ...              prediction_segments=[[{"id": 5, "category_id": 1}]],
    ...              reference_segments=[[{"id": 5, "category_id": 1, "iscrowd": 0}]])
    >>> pq.compute(categories=[{"id": 1, "name": "crane", "isthing": True}])["All"]["pq"]
    1.0
"""

_CITATION = """
@inproceedings{kirillov2019panoptic,
  title={Panoptic Segmentation},
  author={Kirillov, Alexander and He, Kaiming and Girshick, Ross and Rother, Carsten and Doll{\\'a}r, Piotr},
  booktitle={CVPR},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PanopticQuality(evaluate.Metric):
    """PQ / SQ / RQ over segment-id maps (panopticapi semantics)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("int64"))),
                    "references": datasets.List(datasets.List(datasets.Value("int64"))),
                    "prediction_segments": datasets.List(
                        {"id": datasets.Value("int64"), "category_id": datasets.Value("int64")}
                    ),
                    "reference_segments": datasets.List(
                        {
                            "id": datasets.Value("int64"),
                            "category_id": datasets.Value("int64"),
                            "iscrowd": datasets.Value("int64"),
                        }
                    ),
                }
            ),
            reference_urls=["https://github.com/cocodataset/panopticapi"],
        )

    def _compute(self, predictions, references, prediction_segments, reference_segments, categories=None):
        if categories is None:
            raise ValueError("pass categories=[{'id', 'name', 'isthing'}, ...] to compute()")
        accumulator = core.PQAccumulator(categories)
        for index, (pred, ref, pred_segs, ref_segs) in enumerate(
            zip(predictions, references, prediction_segments, reference_segments, strict=True)
        ):
            accumulator.update(pred, pred_segs, ref, ref_segs, image_id=index)
        return accumulator.compute()
