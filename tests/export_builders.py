"""Small CVAT exports built in ``tmp_path`` and checks of converted folders (not a test module)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_scripts.conversion.report import ReportWarning
from dataset_scripts.cvat_to_panoptic import main
from dataset_scripts.panoptic_format import load_panoptic_json, read_panoptic_png, segment_stats


def rect(x0, y0, x1, y1) -> list:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_picture(path: Path, size=(16, 12), seed: int = 0) -> np.ndarray:
    """A random RGB PNG/JPEG at ``path``; returns its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def coco_export(root: Path, images: list, annotations: list, categories: list | None = None) -> Path:
    """``root/annotations/instances_default.json`` (pictures go to ``root/images/``)."""
    categories = (
        categories if categories is not None else [{"id": 1, "name": "car"}, {"id": 2, "name": "road"}]
    )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    return root


def xml_export(root: Path, images: list[tuple[str, str, int, int, str]], labels=("car", "road")) -> Path:
    """``root/annotations.xml`` from ``(id, name, width, height, inner XML)`` tuples."""
    names = "".join(f"<label><name>{label}</name></label>" for label in labels)
    body = "".join(
        f'<image id="{i}" name="{name}" width="{w}" height="{h}">{inner}</image>'
        for i, name, w, h, inner in images
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.xml").write_text(
        f"<annotations><version>1.1</version><meta><task><labels>{names}</labels></task></meta>{body}</annotations>"
    )
    return root


def run_cli(argv: list[str], caplog) -> tuple[int, list[str]]:
    """``main(argv)`` in this process: exit status and the logged error lines."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in argv])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def no_output_left(root: Path, out: Path) -> bool:
    """Neither the output folder nor a hidden temporary sibling of it exists."""
    return (
        not out.exists()
        and not list(root.glob(f".{out.name}.tmp-*"))
        and not list(root.glob(f".{out.name}.old-*"))
    )


def check_panoptic_folder(out: Path) -> dict[str, dict]:
    """Check interface 1 and its invariants; returns the JSON per split."""
    docs = {}
    for json_path in sorted((out / "annotations").glob("panoptic_*.json")):
        split = json_path.stem[len("panoptic_") :]
        doc = load_panoptic_json(json_path)
        docs[split] = doc
        cats = doc["categories"]
        assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
        assert len({tuple(c["color"]) for c in cats}) == len(cats)
        assert all(c["isthing"] in (0, 1) and c["supercategory"] for c in cats)
        images = {img["id"]: img for img in doc["images"]}
        for ann in doc["annotations"]:
            img = images[ann["image_id"]]
            with Image.open(out / split / img["file_name"]) as picture:
                assert picture.mode == "RGB" and picture.size == (img["width"], img["height"])
            ids = read_panoptic_png(out / "annotations" / f"panoptic_{split}" / ann["file_name"])
            assert ids.shape == (img["height"], img["width"])
            stats = segment_stats(ids)
            segs = {s["id"]: s for s in ann["segments_info"]}
            assert len(segs) == len(ann["segments_info"])  # unique ids
            assert set(stats) == set(segs)  # every id in the PNG is in the JSON and vice versa
            for seg_id, seg in segs.items():
                assert seg["area"] == stats[seg_id].area and seg["bbox"] == stats[seg_id].bbox
    return docs


def group_by_code(warnings: list[ReportWarning]) -> dict[str, list[ReportWarning]]:
    """The report's warnings grouped by code."""
    groups: dict[str, list[ReportWarning]] = defaultdict(list)
    for warning in warnings:
        groups[warning.code].append(warning)
    return dict(groups)
