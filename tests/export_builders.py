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


def xml_project_export(
    root: Path, images: list[tuple[str, str, str, str, int, int, str]], labels=("car", "road")
) -> Path:
    """A "CVAT for images 1.1" *project* export: ``root/annotations.xml`` + ``images/<subset>/``.

    ``images`` holds ``(task id, subset, image id, name, width, height, inner XML)``; as CVAT writes
    it, ``<meta><project>`` lists the labels and the tasks, and every ``<image>`` carries its
    ``subset`` and ``task_id`` (ids and names repeat from task to task).
    """
    names = "".join(f"<label><name>{label}</name><type>any</type></label>" for label in labels)
    tasks = {(task, subset) for task, subset, *_ in images}
    task_meta = "".join(
        f"<task><id>{task}</id><name>task {task}</name><mode>annotation</mode><subset>{subset}</subset></task>"
        for task, subset in sorted(tasks)
    )
    body = "".join(
        f'<image id="{i}" name="{name}" subset="{subset}" task_id="{task}" width="{w}" height="{h}">{inner}</image>'
        for task, subset, i, name, w, h, inner in images
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><project><id>1</id>'
        f"<name>site</name><labels>{names}</labels><tasks>{task_meta}</tasks></project></meta>{body}</annotations>"
    )
    return root


def coco_project_export(root: Path, subsets: dict[str, tuple[list, list]], categories: list | None = None) -> Path:
    """A "COCO 1.0" *project* export: ``annotations/instances_<Subset>.json`` + ``images/<Subset>/``."""
    categories = (
        categories if categories is not None else [{"id": 1, "name": "car"}, {"id": 2, "name": "road"}]
    )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for subset, (images, anns) in subsets.items():
        doc = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{subset}.json").write_text(json.dumps(doc))
    return root


def video_export(
    root: Path,
    tracks: list[tuple[str, str, str]],
    size: tuple[int, int] = (16, 12),
    *,
    frames: int = 10,
    labels=("car", "road"),
    project_tasks: list[tuple[str, str]] | None = None,
    frame_filter: str = "",
) -> Path:
    """A "CVAT for video 1.1" export: ``root/annotations.xml`` with ``<track>`` elements.

    ``tracks`` holds ``(track attributes, label, inner XML of its per-frame shapes)``; the task
    meta gives the video's ``<original_size>`` (``size`` = width, height) as CVAT writes it. With
    ``project_tasks`` (``(task id, subset)``) it is a project export: the meta lists the tasks under
    ``<project><tasks>`` and every track should carry ``task_id`` and ``subset``. Pictures are not
    written (see `write_frames`).
    """
    names = "".join(f"<label><name>{label}</name><type>any</type></label>" for label in labels)
    width, height = size

    def task_meta(task_id: str, subset: str = "", extra: str = "") -> str:
        return (
            f"<task><id>{task_id}</id><name>video</name><size>{frames}</size><mode>interpolation</mode>"
            f"<overlap>5</overlap><start_frame>0</start_frame><stop_frame>{frames - 1}</stop_frame>"
            f"<frame_filter>{frame_filter}</frame_filter><subset>{subset}</subset>"
            f"<original_size><width>{width}</width><height>{height}</height></original_size>{extra}</task>"
        )

    if project_tasks is None:
        meta = task_meta("1", extra=f"<labels>{names}</labels>")
    else:
        tasks = "".join(task_meta(task, subset) for task, subset in project_tasks)
        meta = f"<project><id>1</id><name>site</name><labels>{names}</labels><tasks>{tasks}</tasks></project>"
    body = "".join(f'<track {attrs} label="{label}" source="manual">{inner}</track>' for attrs, label, inner in tracks)
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.xml").write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta>{meta}</meta>'
        f"{body}</annotations>"
    )
    return root


def track_shape(tag: str, frame: int, geometry: str, *, outside: int = 0, keyframe: int = 1, z_order: int = 0) -> str:
    """One per-frame shape of a track, attributes in CVAT's order (frame, keyframe, outside, occluded)."""
    return (
        f'<{tag} frame="{frame}" keyframe="{keyframe}" outside="{outside}" occluded="0" {geometry} '
        f'z_order="{z_order}"></{tag}>'
    )


def write_frames(folder: Path, frames, size=(16, 12), ext: str = ".PNG") -> dict[int, np.ndarray]:
    """Frame pictures named as CVAT names them (``frame_000012.PNG``); returns their pixels."""
    pixels = {}
    for frame in frames:
        path = folder / f"frame_{frame:06d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.random.default_rng(frame).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(path, format="JPEG" if ext.lower() in (".jpg", ".jpeg") else "PNG", quality=100)
        pixels[frame] = array
    return pixels
