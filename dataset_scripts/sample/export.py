"""Render planned images and write them as CVAT exports (COCO 1.0 or XML 1.1), a dataset atomically.

An export folder is ``images/`` plus ``annotations/instances_default.json`` (COCO 1.0) or
``annotations.xml`` (CVAT for images 1.1), the layouts CVAT's export zips unpack to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from dataset_scripts.atomic_io import atomic_directory
from dataset_scripts.sample.coco_writer import coco_document
from dataset_scripts.sample.jpeg import encode_image
from dataset_scripts.sample.plans import SAMPLE_QUIRKS, ImagePlan, Plans
from dataset_scripts.sample.readme import sample_readme
from dataset_scripts.sample.scene import STUFF_LABELS, Scene, render_scene
from dataset_scripts.sample.task import TaskImage, TaskShape
from dataset_scripts.sample.xml_writer import cvat_xml_document

logger = logging.getLogger(__name__)

FORMATS = ("coco", "xml")


def task_image(plan: ImagePlan, scene: Scene) -> TaskImage:
    """The annotations of one planned image.

    Stuff gets z-order 0 and things 1, 2, ... in paint order (back to front), as a CVAT annotator
    drawing the scene would leave them. With ``overlap_pair`` the small front pipe is listed
    before the tile that covers it, so that only the z-order (lost in COCO) or the areas tell
    which one is in front.
    """
    height, width = scene.image.shape[:2]
    image = TaskImage(plan.file_name, width, height)
    if not plan.annotated:
        return image
    encodings = dict(plan.encodings)
    shapes = []
    for rank, shape in enumerate(scene.shapes):
        if plan.labels is None or shape.label in plan.labels:
            z_order = 0 if shape.label in STUFF_LABELS else rank
            shapes.append(TaskShape(shape, encodings.get(shape.label, "polygon"), z_order))
    if plan.options.overlap_pair:
        shapes = shapes[:-2] + shapes[:-3:-1]  # the small front pipe listed before the tile
    image.shapes = shapes
    return image


def write_export(
    export_dir: Path,
    category_names: Sequence[str],
    plans: Sequence[ImagePlan],
    annotation_format: str = "coco",
) -> dict:
    """Render the planned images and write one CVAT export.

    Args:
        export_dir: Output folder (``images/`` + the annotation file).
        category_names: Labels of the task, in id (creation) order.
        plans: The images.
        annotation_format: ``"coco"`` (``annotations/instances_default.json``) or ``"xml"``
            (``annotations.xml``).

    Returns:
        The task as a CVAT COCO 1.0 document (also when writing XML: it counts the annotations).
    """
    if annotation_format not in FORMATS:
        raise ValueError(f"unknown annotation format {annotation_format!r} (expected coco or xml)")
    images = []
    (export_dir / "images").mkdir(parents=True, exist_ok=True)
    for plan in plans:
        scene = render_scene(plan.seed, plan.options)
        # Plain writes: `write_dataset` builds the whole folder in a temporary sibling.
        (export_dir / "images" / plan.file_name).write_bytes(encode_image(scene.image, plan.storage))
        images.append(task_image(plan, scene))
    doc = coco_document(category_names, images)
    if annotation_format == "xml":
        xml = cvat_xml_document(export_dir.name, category_names, images)
        (export_dir / "annotations.xml").write_text(xml, encoding="utf-8")
    else:
        (export_dir / "annotations").mkdir(exist_ok=True)
        (export_dir / "annotations" / "instances_default.json").write_text(json.dumps(doc), encoding="utf-8")
    return doc


def write_dataset(
    out_dir: str | Path,
    plans: Plans,
    overwrite: bool = False,
    readme_command: str | None = None,
    annotation_format: str = "coco",
) -> dict[str, dict]:
    """Write every planned export under `out_dir`, atomically (temp folder, then rename).

    Args:
        out_dir: Output folder; one sub-folder per export.
        plans: From `plans.bundled_sample_plans` or `plans.synthetic_plans`.
        overwrite: Replace an existing `out_dir`.
        readme_command: When given, also write ``README.md`` (the command, counts and the bundled
            sample's quirks).
        annotation_format: See `write_export`.

    Returns:
        ``{export name: COCO document}``.

    Raises:
        FileExistsError: `out_dir` exists and `overwrite` is False.
    """
    out_dir = Path(out_dir)
    docs: dict[str, dict] = {}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; this is a data folder meant to be shared
        for name, (category_names, image_plans) in plans.items():
            docs[name] = write_export(tmp / name, category_names, image_plans, annotation_format)
            logger.info(
                "%s: %d images, %d annotations", name, len(image_plans), len(docs[name]["annotations"])
            )
        if readme_command is not None:
            text = sample_readme(tmp, readme_command, docs, SAMPLE_QUIRKS)
            (tmp / "README.md").write_text(text, encoding="utf-8")
    return docs
