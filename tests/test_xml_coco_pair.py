"""One synthetic CVAT task exported as XML 1.1 and as COCO 1.0 converts to the same panoptic output.

The task is written in ``tmp_path`` by the sample package's writers (`dataset_scripts.sample`):
polygons, brush masks (CVAT RLE in a box in XML; uncompressed and compressed-string RLE with
``iscrowd: 1`` in COCO), overlapping shapes (XML keeps the z-order, COCO lists the small front
pipe before the large tile that covers it), box-only annotations, an unannotated (void) region
and images without annotations. Both exports are converted separately with
`dataset_scripts.cvat_to_panoptic` and compared pixel by pixel (category of every pixel, the
partition into segments, each segment's area, box and crowd flag).

Where the formats legitimately differ, the difference is pinned down by its own test:

* COCO 1.0 loses the z-order: the converter paints the smaller region in front, which is what
  CVAT showed only when the smaller shape was in front (`test_z_order_against_area_...`).
* A multi-part polygon is one COCO annotation but several ``<polygon>`` elements sharing a
  ``group_id`` in XML (`test_grouped_polygons_...`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataset_scripts.conversion.report import BOX_ONLY, INVISIBLE
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.panoptic_format import load_panoptic_json, read_panoptic_png
from dataset_scripts.sample.export import write_dataset
from dataset_scripts.sample.geometry import polygon_mask
from dataset_scripts.sample.plans import ImagePlan
from dataset_scripts.sample.scene import STUFF_LABELS, SceneOptions, render_scene
from tests.export_builders import group_by_code

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TASK = "cvat_task_site"
CATEGORIES = ("floor", "wall", "sky", "ground", "brick", "pipe", "tile", "excavator")
SIZE = {"width": 160, "height": 120}
OVERLAP = ImagePlan(
    "site_overlap.jpg",
    11,
    SceneOptions(**SIZE, overlap_pair=True, min_things=1, max_things=1, required=("brick",)),
)


def site_plans() -> list[ImagePlan]:
    """Eight images covering every construct both formats can express."""
    return [
        OVERLAP,
        ImagePlan(
            "site_brush.jpg",
            12,
            SceneOptions(**SIZE, required=("brick", "pipe")),
            encodings=(("brick", "rle"),),
        ),
        ImagePlan(
            "site_brush_string.jpg",
            13,
            SceneOptions(**SIZE, required=("tile",)),
            encodings=(("tile", "rle_string"),),
        ),
        # A multi-part region drawn with the brush: one <mask>, one COCO RLE.
        ImagePlan(
            "site_excavator.jpg",
            14,
            SceneOptions(**SIZE, thing_labels=("excavator",), min_things=1, max_things=1),
            encodings=(("excavator", "rle"),),
        ),
        ImagePlan(
            "site_boxes.jpg",
            15,
            SceneOptions(**SIZE, min_things=3, max_things=3, required=("pipe", "brick", "tile")),
            encodings=(("pipe", "box"),),
        ),
        ImagePlan("site_void.jpg", 16, SceneOptions(**SIZE, void_patch=True, bottom="floor")),
        ImagePlan("site_empty.jpg", 17, SceneOptions(**SIZE), annotated=False),
        ImagePlan("site_plain.jpg", 18, SceneOptions(**SIZE, min_things=2, max_things=3)),
    ]


def write_pair(root: Path, plans: list[ImagePlan]) -> dict[str, Path]:
    """The same task as a CVAT COCO 1.0 and a CVAT for images 1.1 export folder."""
    exports = {}
    for fmt in ("coco", "xml"):
        write_dataset(root / fmt, {TASK: (CATEGORIES, plans)}, annotation_format=fmt)
        exports[fmt] = root / fmt / TASK
    return exports


def convert(export: Path, out: Path, **options):
    return convert_exports([export], out, ConversionOptions(stuff_labels=list(STUFF_LABELS), **options))


def panoptic_view(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[tuple]]]:
    """Per output picture: ``(ids, category map, segments)``.

    ``ids`` and the category map are ``(H, W)`` (category names as an object array, "" = void);
    segments are sorted ``(category name, iscrowd, area, bbox)`` tuples.
    """
    view = {}
    for json_path in sorted((out / "annotations").glob("panoptic_*.json")):
        doc = load_panoptic_json(json_path)
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for ann in doc["annotations"]:
            ids = read_panoptic_png(json_path.with_suffix("") / ann["file_name"])
            lut = {0: "", **{s["id"]: names[s["category_id"]] for s in ann["segments_info"]}}
            categories = np.vectorize(lut.__getitem__, otypes=[object])(ids)
            segments = sorted(
                (names[s["category_id"]], s["iscrowd"], s["area"], tuple(s["bbox"]))
                for s in ann["segments_info"]
            )
            view[ann["file_name"]] = (ids, categories, segments)
    return view


def assert_same_panoptic(xml_out: Path, coco_out: Path) -> None:
    xml_view, coco_view = panoptic_view(xml_out), panoptic_view(coco_out)
    assert sorted(xml_view) == sorted(coco_view)
    for name, (ids, categories, segments) in xml_view.items():
        coco_ids, coco_categories, coco_segments = coco_view[name]
        np.testing.assert_array_equal(categories, coco_categories, err_msg=name)
        assert segments == coco_segments, name
        # Same partition: every XML segment is exactly one COCO segment.
        pairs = np.unique(np.stack([ids.ravel(), coco_ids.ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(ids)) == len(np.unique(coco_ids)), name


def read_xml(export: Path) -> ET.Element:
    return ET.parse(export / "annotations.xml").getroot()


@pytest.mark.parametrize("keep_crowd", [False, True])
def test_xml_and_coco_exports_of_one_task_convert_identically(tmp_path, keep_crowd):
    exports = write_pair(tmp_path, site_plans())
    reports = {
        fmt: convert(path, tmp_path / f"out_{fmt}", keep_crowd=keep_crowd) for fmt, path in exports.items()
    }
    assert_same_panoptic(tmp_path / "out_xml", tmp_path / "out_coco")

    # Both exports really hold the constructs under test.
    root = read_xml(exports["xml"])
    assert {e.tag for image in root.iter("image") for e in image} == {"polygon", "mask", "box"}
    coco = (exports["coco"] / "annotations" / "instances_default.json").read_text()
    assert '"segmentation": []' in coco and '"iscrowd": 1' in coco and '"counts": "' in coco
    assert '"counts": [' in coco
    # Box-only annotations are reported and skipped the same way; nothing else differs.
    codes = {fmt: Counter(w.code for w in report.warnings) for fmt, report in reports.items()}
    assert codes["xml"] == codes["coco"] and codes["xml"][BOX_ONLY] >= 1

    view = panoptic_view(tmp_path / "out_xml")
    crowd = {name for name, (_, _, segments) in view.items() if any(s[1] for s in segments)}
    assert crowd == (
        {"site_brush.png", "site_brush_string.png", "site_excavator.png"} if keep_crowd else set()
    )
    assert (view["site_void.png"][0] == 0).mean() > 0.02  # the tarp stays void in both


def test_the_overlap_is_resolved_by_z_order_in_xml_and_by_area_in_coco(tmp_path):
    """The small pipe in front of the tile: XML says so with z_order, COCO by listing order only."""
    exports = write_pair(tmp_path, [OVERLAP])
    scene = render_scene(OVERLAP.seed, OVERLAP.options)
    tile, pipe = (polygon_mask(s.polygons, 120, 160) for s in scene.shapes[-2:])
    assert pipe.sum() < tile.sum() and (pipe & tile).sum() == pipe.sum()  # the tile covers the pipe

    z_orders = {p.get("label"): int(p.get("z_order")) for p in read_xml(exports["xml"]).iter("polygon")}
    assert z_orders["pipe"] > z_orders["tile"]
    for fmt, path in exports.items():
        convert(path, tmp_path / f"out_{fmt}")
    assert_same_panoptic(tmp_path / "out_xml", tmp_path / "out_coco")
    _, categories, segments = panoptic_view(tmp_path / "out_coco")["site_overlap.png"]
    assert (categories[pipe] == "pipe").all()
    assert [s[2] for s in segments if s[0] == "tile"] == [int(tile.sum() - pipe.sum())]


def test_z_order_against_area_is_kept_by_xml_and_lost_by_coco(tmp_path):
    """Legitimate format difference: the large tile in front of the small pipe (XML z_order).

    COCO 1.0 has no z-order, so the converter puts the smaller region in front and the pipe stays
    visible; the XML export says the tile hides it, and its conversion drops the pipe.
    """
    exports = write_pair(tmp_path, [OVERLAP])
    xml_path = exports["xml"] / "annotations.xml"
    tree = ET.parse(xml_path)
    polygons = {p.get("label"): p for p in tree.getroot().iter("polygon")}
    polygons["tile"].set("z_order", str(int(polygons["pipe"].get("z_order")) + 1))
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    reports = {fmt: convert(path, tmp_path / f"out_{fmt}") for fmt, path in exports.items()}

    (xml_ids, xml_categories, _), (_, coco_categories, _) = (
        panoptic_view(tmp_path / f"out_{fmt}")["site_overlap.png"] for fmt in ("xml", "coco")
    )
    scene = render_scene(OVERLAP.seed, OVERLAP.options)
    pipe = polygon_mask(scene.shapes[-1].polygons, *xml_ids.shape)
    assert (coco_categories[pipe] == "pipe").all() and (xml_categories[pipe] == "tile").all()
    np.testing.assert_array_equal(xml_categories[~pipe], coco_categories[~pipe])
    assert [w.message for w in group_by_code(reports["xml"].warnings)[INVISIBLE]] == [
        "'pipe' has no visible pixel left (covered by other segments): dropped"
    ]
    assert INVISIBLE not in group_by_code(reports["coco"].warnings)


def test_grouped_polygons_are_one_segment_in_both_formats(tmp_path):
    plan = ImagePlan(
        "site_excavator.jpg",
        14,
        SceneOptions(**SIZE, thing_labels=("excavator",), min_things=1, max_things=1),
    )
    exports = write_pair(tmp_path, [plan])
    groups = {
        p.get("group_id") for p in read_xml(exports["xml"]).iter("polygon") if p.get("label") == "excavator"
    }
    assert len(groups) == 1 and None not in groups  # three parts, one group
    for fmt, path in exports.items():
        convert(path, tmp_path / f"out_{fmt}")
    assert_same_panoptic(tmp_path / "out_xml", tmp_path / "out_coco")
