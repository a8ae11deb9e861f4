"""The synthetic *source* domain the tiny pretrained checkpoint is trained on (`finetune/make_tiny_checkpoint.py`).

It plays COCO-panoptic's role for `facebook/detr-resnet-50-panoptic`: a class set that overlaps the
bundled sample's without being it.

* things: ``brick`` and ``excavator`` under the sample's names (warm-started by name), the sample's
  ``pipe`` under another name, ``pole`` (warm-started through ``class_map``); the sample's ``tile``
  never appears, so it is a new class for fine-tuning;
* stuff: the same four bands under COCO-panoptic names (``sky-other-merged``, ``wall-other-merged``,
  ``floor-other-merged``, ``dirt-merged``), so fine-tuning warm-starts them through ``class_map``
  (`SAMPLE_CLASS_MAP`), as `default.yaml` does from the Hub checkpoint.

The scenes are rendered by the sample generator and written as CVAT COCO 1.0 exports whose category
names are then renamed (`rename_categories`: the renderer names shapes by the sample's labels);
`dataset_scripts.sample.synthetic_set.build_panoptic_set(..., rename=SOURCE_NAMES)` does both.
"""

from __future__ import annotations

import json
from pathlib import Path

from dataset_scripts.sample.plans import Plans, synthetic_plans
from dataset_scripts.sample.seeds import PRETRAINING

# Rendered thing labels; `pipe` is written as `pole` (SOURCE_THING_NAMES).
RENDERED_THINGS = ("brick", "pipe", "excavator")
SOURCE_THING_NAMES = {"pipe": "pole"}
SOURCE_THINGS = tuple(SOURCE_THING_NAMES.get(name, name) for name in RENDERED_THINGS)
# sample stuff name -> source (COCO-panoptic) name
SOURCE_STUFF_NAMES = {
    "sky": "sky-other-merged",
    "wall": "wall-other-merged",
    "floor": "floor-other-merged",
    "ground": "dirt-merged",
}
SOURCE_STUFF_LABELS = tuple(SOURCE_STUFF_NAMES.values())
# Every renaming of the source domain ({rendered label: category name}).
SOURCE_NAMES = {**SOURCE_THING_NAMES, **SOURCE_STUFF_NAMES}
# The fine-tuning `class_map` onto the bundled sample's classes ({sample name: checkpoint name}).
SAMPLE_CLASS_MAP = dict(SOURCE_NAMES)
# Scene size (width, height): the bundled sample's 320x240 photos at 0.6, so that pretraining and the
# quickstart's fine-tuning see objects at the same scale (shortest edge 128-160 px in both configs).
SOURCE_SIZE = (192, 144)


def source_domain_plans(
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = SOURCE_SIZE,
    min_things: int = 1,
    max_things: int = 2,
) -> Plans:
    """Plans of the source set (one export; brick, pipe and excavator things over the four stuff bands).

    The only plans drawn from the `seeds.PRETRAINING` scene seeds: no target set or sample shares a scene.
    """
    return synthetic_plans(
        num_images,
        seed=seed,
        size=size,
        exports=1,
        min_things=min_things,
        max_things=max_things,
        thing_labels=RENDERED_THINGS,
        seed_range=PRETRAINING,
    )


def rename_categories(export: Path, names: dict[str, str]) -> None:
    """Rename the categories of a CVAT COCO 1.0 export in place ({old name: new name}; others kept)."""
    path = Path(export) / "annotations" / "instances_default.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    for category in doc["categories"]:
        category["name"] = names.get(category["name"], category["name"])
    path.write_text(json.dumps(doc), encoding="utf-8")
