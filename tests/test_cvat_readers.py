"""CVAT readers: COCO 1.0, one-folder-per-class COCO, XML 1.1 (incl. CVAT's RLE), their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from dataset_scripts.conversion.rasterize import CategoryRef, rasterize_image
from dataset_scripts.cvat.coco import read_coco_export, read_coco_file
from dataset_scripts.cvat.exports import merge_images, read_export
from dataset_scripts.cvat.records import ConversionError
from dataset_scripts.cvat.xml import decode_cvat_rle, read_cvat_xml
from dataset_scripts.sample.rle import cvat_mask_rle, uncompressed_rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>car</name><type>polygon</type></label>
    <label><name>road</name><type>mask</type></label>
    <label><name>sign</name><type>rectangle</type></label>
    <label><name>night</name><type>tag</type></label>
    <label><name>unused</name><type>any</type></label>
  </labels></task></meta>
  <image id="0" name="sub/dir/a.jpg" width="64" height="48">
    <polygon label="car" source="manual" occluded="1" points="1.5,2.0;20,2;20,10.5" z_order="3">
      <attribute name="color">red</attribute>
    </polygon>
    <mask label="road" source="manual" occluded="0" rle="{rle}" left="4" top="30" width="10" height="5" z_order="-1"/>
    <box label="sign" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"/>
    <tag label="night" source="manual"/>
    <polyline label="car" points="0,0;5,5" z_order="0"/>
  </image>
  <image id="1" name="b.png" width="32" height="32"/>
</annotations>
"""


def road_mask() -> np.ndarray:
    mask = np.zeros((5, 10), bool)
    mask[1:4, 2:9] = True
    mask[0, 0] = True
    return mask


def write_xml(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "annotations.xml"
    rle = ", ".join(map(str, cvat_mask_rle(road_mask())))
    path.write_text(text if text is not None else XML.replace("{rle}", rle))
    return path


def coco_doc(**overrides) -> dict:
    full = np.zeros((48, 64), np.uint8)
    full[10:20, 30:40] = 1
    compressed = mask_utils.encode(np.asfortranarray(full))
    doc = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 9, "name": "road"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "segmentation": [[1, 1, 10, 1, 10, 10], [20, 20, 30, 20, 30, 30]],
                "bbox": [0, 0, 999, 999],
                "area": 5,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 9,
                "segmentation": {"size": [48, 64], "counts": [100, 20, 2952]},
                "iscrowd": 1,
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 3,
                "segmentation": [],
                "bbox": [1, 1, 4, 4],
                "iscrowd": 0,
            },
            {
                "id": 4,
                "image_id": 7,
                "category_id": 3,
                "segmentation": {"size": [48, 64], "counts": compressed["counts"].decode()},
                "iscrowd": 1,
            },
        ],
    }
    doc.update(overrides)
    return doc


def write_coco(folder: Path, doc: dict | str, name: str = "annotations/instances_default.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# ----------------------------------------------------------------------------- CVAT RLE + XML


def test_decode_cvat_rle_is_row_major_and_starts_with_zeros():
    mask = decode_cvat_rle([1, 2, 3], width=3, height=2)
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(decode_cvat_rle([0, 2, 4], 3, 2), [[1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(decode_cvat_rle(cvat_mask_rle(road_mask()), 10, 5), road_mask())
    with pytest.raises(ValueError, match="sum"):
        decode_cvat_rle([1, 2], 3, 2)


def test_read_cvat_xml_shapes(tmp_path):
    export = read_cvat_xml(write_xml(tmp_path))
    assert export.labels == ["car", "road", "sign", "night", "unused"]
    a, b = export.images
    assert (a.file_name, a.width, a.height, a.image_id, a.key) == (
        "sub/dir/a.jpg",
        64,
        48,
        "0",
        "sub/dir/a.jpg",
    )
    assert b.shapes == []
    kinds = [(s.kind, s.label, s.z_order) for s in a.shapes]
    assert kinds == [
        ("polygon", "car", 3),
        ("mask", "road", -1),
        ("box", "sign", 0),
        ("tag", "night", 0),
        ("unsupported", "car", 0),
    ]
    polygon, mask = a.shapes[:2]
    assert polygon.polygons == ((1.5, 2.0, 20.0, 2.0, 20.0, 10.5),) and polygon.occluded
    assert mask.mask_box == (4, 30, 10, 5) and mask.iscrowd
    np.testing.assert_array_equal(decode_cvat_rle(mask.mask_counts, 10, 5), road_mask())
    assert len({s.annotation_id for s in a.shapes}) == 5 and polygon.annotation_id == "0/polygon#0"


def test_xml_images_are_found_in_images_folder_with_nested_names(tmp_path):
    export = read_cvat_xml(write_xml(tmp_path))
    a, b = export.images
    assert a.resolve() is None
    nested = tmp_path / "images" / "sub" / "dir" / "a.jpg"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"x")
    assert a.resolve() == nested
    (tmp_path / "b.png").write_bytes(b"x")  # next to the XML
    assert b.resolve() == tmp_path / "b.png"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("</annotations>", ""), "malformed XML"),
        (
            lambda t: t.replace('points="1.5,2.0;20,2;20,10.5"', 'points="1.5;2"'),
            r"image 0 \(sub/dir/a.jpg\) polygon #0: malformed points",
        ),
        (
            lambda t: t.replace('left="4" top="30" width="10"', 'left="4" top="30" width="11"'),
            r"mask #1: malformed rle",
        ),
        (lambda t: t.replace('width="64" height="48"', 'width="sixty" height="48"'), "width='sixty'"),
        (
            lambda t: t.replace(
                '<image id="1"',
                '<track id="0" label="car"><polygon frame="0" outside="0" occluded="0" keyframe="1" '
                'points="0,0;4,0;4,4" z_order="0"/></track><image id="1"',
            ),
            r"image 0 \(track 0\) polygon: the task's frame size",
        ),
    ],
)
def test_bad_xml_is_a_clear_error(tmp_path, edit, match):
    rle = ", ".join(map(str, cvat_mask_rle(road_mask())))
    path = write_xml(tmp_path, edit(XML.replace("{rle}", rle)))
    with pytest.raises(ConversionError, match=match) as info:
        read_cvat_xml(path)
    assert str(path) in str(info.value)


def test_cvat_mask_and_coco_rle_rasterise_identically():
    """The same brush mask written the XML way (box + CVAT RLE) and the COCO way (full-image RLE)."""
    rng = np.random.default_rng(3)
    full = np.zeros((40, 50), bool)
    full[5:30, 10:35] = rng.random((25, 25)) > 0.4
    ys, xs = np.nonzero(full)
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    box = full[top:bottom, left:right]
    from dataset_scripts.cvat.records import Shape

    xml_shape = Shape(
        label="car",
        kind="mask",
        source="x",
        annotation_id="0/mask#0",
        z_order=0,
        mask_box=(int(left), int(top), int(right - left), int(bottom - top)),
        mask_counts=tuple(cvat_mask_rle(box)),
    )
    uncompressed = uncompressed_rle(full)["counts"]
    coco_shape = Shape(
        label="car", kind="rle", source="c", annotation_id="1", rle={"size": [40, 50], "counts": uncompressed}
    )
    cats = {"car": CategoryRef(1, True)}
    a = rasterize_image(40, 50, [xml_shape], cats)
    b = rasterize_image(40, 50, [coco_shape], cats)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.ids > 0, full)
    assert a.segments_info == b.segments_info


# ----------------------------------------------------------------------------- COCO


def test_read_coco_export(tmp_path):
    write_coco(tmp_path, coco_doc())
    (export,) = read_coco_export(tmp_path)
    assert export.labels == ["car", "road"] and export.label_supercategories == {"car": "vehicle"}
    (image,) = export.images
    assert image.search_dirs[:2] == (tmp_path / "images" / "default", tmp_path / "images")
    poly, rle, box, compressed = image.shapes
    assert poly.kind == "polygon" and len(poly.polygons) == 2 and poly.z_order is None
    assert rle.kind == "rle" and rle.iscrowd and rle.label == "road"
    assert box.kind == "box" and box.annotation_id == "3"
    # Compressed strings are decoded (and their length checked) while reading.
    assert (
        compressed.kind == "rle"
        and sum(compressed.rle["counts"]) == compressed.rle["size"][0] * compressed.rle["size"][1]
    )
    assert [s.order for s in image.shapes] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda d: d["annotations"][1]["segmentation"].update(size=[24, 64]),
            r"annotation 2: RLE size 24x64",
        ),
        (
            lambda d: d["annotations"][1]["segmentation"].update(counts=[100, 20]),
            r"annotation 2: malformed RLE",
        ),
        (lambda d: d["annotations"][0].update(category_id=99), r"annotation 1: unknown category_id 99"),
        (lambda d: d["annotations"][0].update(image_id=99), r"annotation 1: unknown image_id 99"),
        (lambda d: d["annotations"][0].update(segmentation=[["a", "b"]]), r"annotation 1: malformed polygon"),
        (lambda d: d["images"][0].pop("width"), r"image 7 \(a.jpg\): width/height"),
        (lambda d: d.pop("annotations"), "missing list 'annotations'"),
    ],
)
def test_bad_coco_is_a_clear_error(tmp_path, mutate, match):
    doc = coco_doc()
    mutate(doc)
    path = write_coco(tmp_path, doc)
    with pytest.raises(ConversionError, match=match) as info:
        read_coco_file(path, [])
    assert str(path) in str(info.value)


def test_malformed_json_names_the_file(tmp_path):
    path = write_coco(tmp_path, '{"images": [')
    with pytest.raises(ConversionError, match="malformed JSON") as info:
        read_coco_file(path, [])
    assert str(path) in str(info.value)


def test_per_class_layout_and_merging_by_name(tmp_path):
    """One COCO file per class, category ids differ; the same image in two folders gets both."""
    brick = coco_doc(
        categories=[{"id": 1, "name": "brick"}],
        annotations=[{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 10, 1, 10, 10]]}],
    )
    pipe = coco_doc(
        categories=[{"id": 5, "name": "pipe"}],
        annotations=[{"id": 1, "image_id": 7, "category_id": 5, "segmentation": [[20, 20, 30, 20, 30, 30]]}],
    )
    write_coco(tmp_path / "brick", brick, "coco.json")
    write_coco(tmp_path / "pipe", pipe, "coco.json")
    exports = read_export(tmp_path)
    assert [e.labels for e in exports] == [["brick"], ["pipe"]]
    assert exports[0].images[0].search_dirs[0] == tmp_path / "brick" / "images"
    merged = merge_images(exports)
    assert list(merged) == ["a.jpg"]
    shapes = merged["a.jpg"].shapes
    assert [s.label for s in shapes] == ["brick", "pipe"] and [s.order for s in shapes] == [0, 1]
    assert merged["a.jpg"].search_dirs[:2] == (tmp_path / "brick" / "images", tmp_path / "pipe" / "images")


def test_same_file_name_with_another_size_is_an_error(tmp_path):
    write_coco(tmp_path / "one", coco_doc(), "coco.json")
    other = coco_doc()
    other["images"][0]["width"] = 65
    write_coco(tmp_path / "two", {**other, "annotations": other["annotations"][:1]}, "coco.json")
    with pytest.raises(ConversionError, match=r"image 7 \(a.jpg\) is 65x48 .* as 64x48"):
        merge_images(read_export(tmp_path))


def test_read_export_recognises_layouts(tmp_path):
    (tmp_path / "x").mkdir()
    write_xml(tmp_path / "x")
    assert read_export(tmp_path / "x")[0].source.endswith("annotations.xml")
    write_coco(tmp_path / "c", coco_doc())
    assert read_export(tmp_path / "c")[0].source.endswith("instances_default.json")
    json_file = write_coco(tmp_path / "j", coco_doc(), "labels.json")
    assert read_export(json_file)[0].images[0].search_dirs[0] == tmp_path / "j" / "images"
    with pytest.raises(ConversionError, match="not a CVAT export"):
        read_export(tmp_path / "c" / "annotations")
    with pytest.raises(ConversionError, match="not found"):
        read_export(tmp_path / "nope")
