"""Which scenes go to which export: the bundled quirky sample and clean synthetic sets.

A plan is ``{export name: (category names in id order, [ImagePlan, ...])}``; `export.write_dataset`
renders and writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dataset_scripts.sample.scene import MATERIAL_LABELS, STUFF_LABELS, THING_LABELS, SceneOptions
from dataset_scripts.sample.seeds import SAMPLE, SAMPLE_STRIDE, TARGET, SeedRange

# Category order of each bundled export: the same names get different ids (CVAT numbers the
# labels of each task from 1 in the order they were created).
MATERIALS_CATEGORIES = ("floor", "wall", "sky", "ground", "brick", "pipe", "tile")
MACHINES_CATEGORIES = ("excavator", "ground", "sky", "wall", "floor")
SHARED_FILE_NAME = "site_shared_000.jpg"

SAMPLE_QUIRKS = (
    "The two exports number the same labels differently: `cvat_task_materials` has "
    + ", ".join(f"{name}={i}" for i, name in enumerate(MATERIALS_CATEGORIES, 1))
    + "; `cvat_task_machines` has "
    + ", ".join(f"{name}={i}" for i, name in enumerate(MACHINES_CATEGORIES, 1))
    + ".",
    f"`{SHARED_FILE_NAME}` (same name and size) is in both exports: the stuff, brick, pipe and tile "
    "polygons are in `cvat_task_materials`, the excavator in `cvat_task_machines`.",
    "Brush masks: `materials_002.jpg` (brick) and `machines_001.jpg` (excavator) hold uncompressed RLE "
    '`{"size": [h, w], "counts": [ints]}` with `iscrowd: 1`, as CVAT writes brush masks; '
    "`materials_003.jpg` (tile) holds a compressed-string RLE.",
    "`materials_001.jpg`: a small pipe in front of a large tile patch; both polygons are complete "
    "(the tile polygon covers the pipe) and the pipe is listed first: the z-order is lost, as in every "
    "COCO export, and the smaller segment is the one in front.",
    "`materials_004.jpg`: an unannotated region (a purple tarp on the floor, outside every polygon): void.",
    "`materials_005.jpg`: pixels stored rotated by 90 degrees with EXIF Orientation = 6; the upright "
    "image matches the JSON width/height (CVAT shows it upright).",
    "`materials_006.jpg`: a grayscale (mode L) JPEG.",
    "`materials_007.jpg`: listed in `images` with no annotation at all.",
    "Every third annotation has a wrong `bbox` and `area` (shifted box, area of the box), as CVAT "
    "sometimes writes them (cvat-ai/cvat#8307): a converter must recompute both.",
    "Every excavator is a multi-part polygon: body with tracks, boom and stick are separate parts.",
    "Image sizes vary: most are 320x240, every fourth image of each export is 256x192.",
)


@dataclass(frozen=True)
class ImagePlan:
    """One image of one export.

    Attributes:
        file_name: Name in ``images/``.
        seed: Scene seed.
        options: Scene options.
        labels: Labels annotated in this export (None: all); other shapes are left out.
        encodings: ``{label: encoding}`` (see `task.ENCODINGS`; default polygon).
        storage: See `jpeg.encode_image`.
        annotated: False: the image is listed with no annotation.
    """

    file_name: str
    seed: int
    options: SceneOptions
    labels: tuple[str, ...] | None = None
    encodings: tuple[tuple[str, str], ...] = ()
    storage: str = "rgb"
    annotated: bool = True


Plans = dict[str, tuple[tuple[str, ...], list[ImagePlan]]]

# Bundled `materials_NNN.jpg` images with a quirk (see `SAMPLE_QUIRKS`).
_MATERIALS_SPECIAL: dict[int, dict] = {
    1: {"options": {"overlap_pair": True, "min_things": 1, "max_things": 1, "required": ("brick",)}},
    2: {"encodings": (("brick", "rle"),), "options": {"required": ("brick",)}},
    3: {"encodings": (("tile", "rle_string"),), "options": {"required": ("tile",)}},
    4: {"options": {"void_patch": True, "bottom": "floor"}},
    5: {"storage": "exif_rotated"},
    6: {"storage": "gray"},
    7: {"annotated": False},
}


def _size_for(index: int) -> tuple[int, int]:
    return (256, 192) if index % 4 == 3 else (320, 240)


def bundled_sample_plans(seed: int = 0) -> Plans:
    """The plan of the bundled sample: ``{export name: (category names, image plans)}``.

    Its scenes draw from the `seeds.SAMPLE` range (never a pretraining scene of the shipped checkpoint).
    """

    def scene_seed(index: int) -> int:
        return SAMPLE.scene_seed(seed, index, SAMPLE_STRIDE)

    stuff_and_materials = (*STUFF_LABELS, *MATERIAL_LABELS)
    shared = SceneOptions(
        thing_labels=MATERIAL_LABELS, min_things=3, max_things=3, required=("excavator", "brick"), top="sky"
    )
    shared_seed = scene_seed(999)
    materials = [ImagePlan(SHARED_FILE_NAME, shared_seed, shared, labels=stuff_and_materials)]
    for i in range(18):
        extra = _MATERIALS_SPECIAL.get(i, {})
        w, h = _size_for(i)
        opts = {"width": w, "height": h, "required": (MATERIAL_LABELS[i % 3],), **extra.get("options", {})}
        materials.append(
            ImagePlan(
                f"materials_{i:03d}.jpg",
                scene_seed(i),
                SceneOptions(**opts),
                encodings=extra.get("encodings", ()),
                storage=extra.get("storage", "rgb"),
                annotated=extra.get("annotated", True),
            )
        )
    machines = [ImagePlan(SHARED_FILE_NAME, shared_seed, shared, labels=("excavator",))]
    for i in range(10):
        w, h = _size_for(i)
        opts = SceneOptions(
            width=w, height=h, thing_labels=("excavator",), min_things=1, max_things=1, bottom="ground"
        )
        encodings = (("excavator", "rle"),) if i == 1 else ()
        machines.append(ImagePlan(f"machines_{i:03d}.jpg", scene_seed(500 + i), opts, encodings=encodings))
    return {
        "cvat_task_materials": (MATERIALS_CATEGORIES, materials),
        "cvat_task_machines": (MACHINES_CATEGORIES, machines),
    }


def synthetic_plans(
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 240),
    exports: int = 2,
    min_things: int = 1,
    max_things: int = 3,
    thing_labels: Sequence[str] = THING_LABELS,
    seed_range: SeedRange = TARGET,
) -> Plans:
    """Plans of a clean synthetic set: images dealt round-robin to `exports` exports whose
    category ids differ (each export rotates the label list), every label in every scene allowed.

    Args:
        num_images: Images in the set.
        seed: Set seed: image `i` draws scene seed `seed_range.scene_seed(seed, i)`.
        size: (width, height) of every image.
        exports: Number of exports.
        min_things, max_things: Things per scene (inclusive range).
        thing_labels: Labels things are drawn from.
        seed_range: The purpose's scene seeds (`seeds.TARGET`; `seeds.PRETRAINING` only for the
            source domain the shipped checkpoint is pretrained on).

    Raises:
        ValueError: bad counts, seed or unknown thing labels (the message names the CLI flag).
    """
    if num_images < 1 or exports < 1 or not 0 <= min_things <= max_things:
        raise ValueError("need --num-images >= 1, --exports >= 1 and 0 <= --min-things <= --max-things")
    unknown = sorted(set(thing_labels) - set(THING_LABELS))
    if unknown or not thing_labels:
        raise ValueError(
            f"--things must name some of {', '.join(THING_LABELS)}; got {', '.join(unknown) or 'none'}"
        )
    thing_labels = tuple(dict.fromkeys(thing_labels))
    labels = (*STUFF_LABELS, *thing_labels)
    out: Plans = {}
    for k in range(min(exports, num_images)):
        names = labels[k % len(labels) :] + labels[: k % len(labels)]
        out[f"cvat_task_{k:02d}"] = (names, [])
    names_of = list(out)
    options = SceneOptions(
        width=size[0], height=size[1], thing_labels=thing_labels, min_things=min_things, max_things=max_things
    )
    scene_seeds = [seed_range.scene_seed(seed, i) for i in range(num_images)]  # all checked before any rendering
    for i, scene_seed in enumerate(scene_seeds):
        plan = ImagePlan(f"synth_{seed:04d}_{i:06d}.jpg", scene_seed, options)
        out[names_of[i % len(names_of)]][1].append(plan)
    return out
