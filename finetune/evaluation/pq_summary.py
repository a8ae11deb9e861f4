"""PQ / SQ / RQ from the per-class sums: panopticapi's ``pq_average``, the text tables, the JSON layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.evaluation.pq_core import CategoryIndex


def summarize(stats: np.ndarray, categories: CategoryIndex) -> dict[str, Any]:
    """panopticapi's ``pq_average`` for All / Things / Stuff plus ``per_class``.

    Args:
        stats: ``(C, 4)`` per-class sums (columns ``IOU``, ``TP``, ``FP``, ``FN``).

    Returns:
        ``{"All": {pq, sq, rq, n}, "Things": ..., "Stuff": ..., "per_class": {category_id:
        {pq, sq, rq}}}``; a class that never occurs gets zeros and is left out of the averages.
    """
    per_class: dict[int, dict[str, float]] = {}
    occurs = []
    for row, cat_id in enumerate(categories.ids):
        iou, tp, fp, fn = (float(v) for v in stats[row])
        if tp + fp + fn == 0:
            per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            occurs.append(False)
            continue
        denom = tp + 0.5 * fp + 0.5 * fn
        per_class[cat_id] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
        occurs.append(True)
    results: dict[str, Any] = {}
    for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        sums = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        n = 0
        for row, cat_id in enumerate(categories.ids):
            if not occurs[row] or (isthing is not None and bool(categories.isthing[row]) != isthing):
                continue
            n += 1
            for key in sums:
                sums[key] += per_class[cat_id][key]
        results[group] = {key: (value / n if n else 0.0) for key, value in sums.items()} | {"n": n}
    results["per_class"] = per_class
    return results


def format_tables(results: dict[str, Any], stats: np.ndarray, categories: CategoryIndex) -> str:
    """The panopticapi summary table followed by a per-class table.

    PQ / SQ / RQ are fractions in [0, 1], the unit of training logs and ``all_results.json``
    (panopticapi prints percent); the header says so.
    """
    lines = [
        f"{'fractions':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}",
        "-" * 38,
    ]
    for group in ("All", "Things", "Stuff"):
        r = results[group]
        lines.append(f"{group:10s}| {r['pq']:5.3f}  {r['sq']:5.3f}  {r['rq']:5.3f} {r['n']:5d}")
    width = max([10, *(len(name) for name in categories.names)])
    header = f"{'class':{width}s} {'kind':5s} | {'PQ':>5s} {'SQ':>5s} {'RQ':>5s} | {'TP':>5s} {'FP':>5s} {'FN':>5s}"
    lines += ["", f"{header}   (PQ/SQ/RQ: fractions in [0, 1])", "-" * len(header)]
    for row, cat_id in enumerate(categories.ids):
        _, tp, fp, fn = (int(v) for v in stats[row])
        kind = "thing" if categories.isthing[row] else "stuff"
        if tp + fp + fn == 0:
            lines.append(
                f"{categories.names[row]:{width}s} {kind:5s} | {'-':>5s} {'-':>5s} {'-':>5s} | {0:5d} {0:5d} {0:5d}"
            )
            continue
        pc = results["per_class"][cat_id]
        lines.append(
            f"{categories.names[row]:{width}s} {kind:5s} | {pc['pq']:5.3f} {pc['sq']:5.3f} "
            f"{pc['rq']:5.3f} | {tp:5d} {fp:5d} {fn:5d}"
        )
    return "\n".join(lines)


def results_to_json(results: dict[str, Any]) -> dict[str, Any]:
    """The `summarize` dict with string category ids (JSON object keys)."""
    return {
        **{k: v for k, v in results.items() if k != "per_class"},
        "per_class": {str(k): v for k, v in results["per_class"].items()},
    }
