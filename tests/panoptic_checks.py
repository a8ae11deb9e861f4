"""Checks shared by the converter tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path


def pq_against_itself(out: Path, split: str, capsys) -> float:
    """panopticapi's PQ (all classes) of a converted split scored against itself.

    ``pq_compute`` itself divides by zero when a split has no stuff (or no thing) class, so its
    single-core matcher and ``pq_average(isthing=None)`` are called directly.
    """
    from panopticapi.evaluation import pq_compute_single_core

    doc = json.loads((out / "annotations" / f"panoptic_{split}.json").read_text())
    folder = str(out / "annotations" / f"panoptic_{split}")
    categories = {c["id"]: c for c in doc["categories"]}
    pairs = [(ann, ann) for ann in doc["annotations"]]
    stat = pq_compute_single_core(0, pairs, folder, folder, categories)
    capsys.readouterr()  # panopticapi prints progress
    return stat.pq_average(categories, isthing=None)[0]["pq"]
