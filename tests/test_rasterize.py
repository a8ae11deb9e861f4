"""The per-image rasteriser: overlaps, stuff merging, model stuff, warnings, exact statistics."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from dataset_scripts.conversion.rasterize import CategoryRef, rasterize_image, shape_patch
from dataset_scripts.conversion.report import (
    BOX_ONLY,
    DEGENERATE,
    EMPTY,
    INVISIBLE,
    OUT_OF_BOUNDS,
    TAG,
    UNSUPPORTED,
)
from dataset_scripts.cvat.records import Shape
from dataset_scripts.panoptic_format import segment_stats
from tests.export_builders import group_by_code

H, W = 48, 64
CATS = {
    "car": CategoryRef(1, True),
    "person": CategoryRef(2, True),
    "road": CategoryRef(3, False),
    "sky": CategoryRef(4, False),
}


def rect(x0, y0, x1, y1):
    return (float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1))


def poly(label, *parts, ann="1", order=0, z=None, crowd=False):
    return Shape(
        label=label,
        kind="polygon",
        source="a.json",
        annotation_id=ann,
        order=order,
        z_order=z,
        iscrowd=crowd,
        polygons=tuple(parts),
    )


def label_map(result):
    """(H, W) category id per pixel (0 = void)."""
    lut = {0: 0, **{s["id"]: s["category_id"] for s in result.segments_info}}
    return np.vectorize(lut.get)(result.ids)


def check_invariants(result):
    stats = segment_stats(result.ids)
    ids_json = [s["id"] for s in result.segments_info]
    assert len(ids_json) == len(set(ids_json))
    assert set(stats) == set(ids_json)
    assert sorted(ids_json) == list(range(1, len(ids_json) + 1))
    for seg in result.segments_info:
        assert seg["area"] == stats[seg["id"]].area
        assert seg["bbox"] == stats[seg["id"]].bbox


def full_image_polygon(parts, h, w):
    rles = mask_utils.frPyObjects([list(p) for p in parts], h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def test_polygon_patch_equals_full_image_rasterisation():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = rng.integers(3, 9)
        # Some polygons reach outside the image on purpose.
        pts = np.stack([rng.uniform(-10, W + 10, n), rng.uniform(-10, H + 10, n)], 1).ravel()
        shape = poly("car", tuple(pts.tolist()))
        patch, _ = shape_patch(shape, H, W)
        expected = full_image_polygon([pts.tolist()], H, W)
        got = np.zeros((H, W), bool)
        if patch is not None:
            h, w = patch.mask.shape
            got[patch.top : patch.top + h, patch.left : patch.left + w] = patch.mask
        np.testing.assert_array_equal(got, expected)


def test_smaller_segment_wins_when_z_order_is_lost():
    big = poly("car", rect(0, 0, 40, 40), ann="big", order=1)  # listed last but larger
    small = poly("person", rect(10, 10, 20, 20), ann="small", order=0)
    result = rasterize_image(H, W, [small, big], CATS)
    cats = label_map(result)
    assert (cats[10:20, 10:20] == 2).all()
    assert cats[30, 30] == 1
    check_invariants(result)


def test_overlap_order_lets_the_later_annotation_win():
    small = poly("person", rect(10, 10, 20, 20), ann="small", order=0)
    big = poly("car", rect(0, 0, 40, 40), ann="big", order=1)
    result = rasterize_image(H, W, [small, big], CATS, overlap="order")
    assert (label_map(result)[:40, :40] == 1).all()
    # The small one is now fully covered: dropped and reported with its annotation id.
    warnings = group_by_code(result.warnings)[INVISIBLE]
    assert [w.annotation_id for w in warnings] == ["small"]
    assert [s["category_id"] for s in result.segments_info] == [1]


def test_higher_z_order_wins_over_area():
    big_on_top = poly("car", rect(0, 0, 40, 40), ann="big", order=0, z=2)
    small = poly("person", rect(10, 10, 20, 20), ann="small", order=1, z=1)
    result = rasterize_image(H, W, [big_on_top, small], CATS)
    assert (label_map(result)[:40, :40] == 1).all()
    assert group_by_code(result.warnings)[INVISIBLE][0].annotation_id == "small"


def test_things_are_painted_over_stuff_whatever_the_z_order():
    road = poly("road", rect(0, 20, 64, 48), ann="road", z=5)
    car = poly("car", rect(10, 10, 30, 30), ann="car", z=0)
    result = rasterize_image(H, W, [road, car], CATS)
    cats = label_map(result)
    assert (cats[10:30, 10:30] == 1).all()
    assert (cats[30:, :] == 3).all()
    assert (cats[:10, :] == 0).all()  # unannotated pixels are void
    check_invariants(result)


def test_stuff_regions_of_one_class_form_one_segment():
    parts = [
        poly("road", rect(0, 0, 10, 10), ann="r1", order=0),
        poly("road", rect(30, 30, 40, 40), ann="r2", order=1),
    ]
    result = rasterize_image(H, W, parts, CATS)
    assert len(result.segments_info) == 1
    seg = result.segments_info[0]
    assert seg["category_id"] == 3 and seg["area"] == 200 and seg["bbox"] == [0, 0, 40, 40]


def test_things_of_one_class_stay_separate_and_multipart_polygons_are_one_segment():
    two_part = poly("car", rect(0, 0, 10, 10), rect(20, 0, 30, 10), ann="c1", order=0)
    other = poly("car", rect(40, 0, 50, 10), ann="c2", order=1)
    result = rasterize_image(H, W, [two_part, other], CATS)
    assert [s["area"] for s in result.segments_info] == [200, 100]
    assert result.segments_info[0]["bbox"] == [0, 0, 30, 10]


def test_degenerate_and_out_of_bounds_polygons_are_reported():
    shapes = [
        poly("car", (1.0, 1.0, 5.0, 5.0), ann="two-points"),
        poly("car", (1.0, 1.0, 5.0, 5.0, 9.0, 9.0), ann="collinear"),  # zero area
        poly("car", rect(-5, -5, 10, 10), ann="outside"),
        poly("car", rect(100, 100, 120, 120), ann="far-away"),
    ]
    result = rasterize_image(H, W, shapes, CATS)
    codes = group_by_code(result.warnings)
    assert {w.annotation_id for w in codes[DEGENERATE]} == {"two-points", "collinear"}
    assert {w.annotation_id for w in codes[OUT_OF_BOUNDS]} == {"outside", "far-away"}
    assert [w.annotation_id for w in codes[EMPTY]] == ["far-away"]
    # The clipped polygon keeps its in-image part.
    assert [s["bbox"] for s in result.segments_info] == [[0, 0, 10, 10]]


def test_cvat_mask_box_beyond_the_image_is_clipped():
    mask = Shape(
        label="car",
        kind="mask",
        source="a.xml",
        annotation_id="0/mask#0",
        mask_box=(60, 40, 8, 10),
        mask_counts=(0, 80),
        z_order=0,
    )
    result = rasterize_image(H, W, [mask], CATS)
    assert group_by_code(result.warnings)[OUT_OF_BOUNDS][0].annotation_id == "0/mask#0"
    assert result.segments_info[0]["bbox"] == [60, 40, 4, 8]


def test_boxes_tags_and_unsupported_shapes_are_skipped_with_a_report_line():
    shapes = [
        Shape(label="car", kind="box", source="a.json", annotation_id="7"),
        Shape(label="night", kind="tag", source="a.xml", annotation_id="0/tag#1"),
        Shape(
            label="car", kind="unsupported", source="a.xml", annotation_id="0/polyline#2", detail="polyline"
        ),
    ]
    result = rasterize_image(H, W, shapes, CATS)
    codes = group_by_code(result.warnings)
    assert codes[BOX_ONLY][0].annotation_id == "7"
    assert codes[TAG][0].annotation_id == "0/tag#1"
    assert "polyline" in codes[UNSUPPORTED][0].message
    assert result.segments_info == [] and not result.ids.any()


@pytest.mark.parametrize("keep_crowd", [False, True])
def test_crowd_flag(keep_crowd):
    full = np.zeros((H, W), np.uint8)
    full[5:15, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(full))
    brush = Shape(
        label="car",
        kind="rle",
        source="a.json",
        annotation_id="3",
        iscrowd=True,
        rle={"size": [H, W], "counts": rle["counts"].decode()},
    )
    result = rasterize_image(H, W, [brush], CATS, keep_crowd=keep_crowd)
    assert result.segments_info[0]["iscrowd"] == int(keep_crowd)
    assert result.segments_info[0]["area"] == 200


def test_model_stuff_is_the_bottom_layer_and_merges_with_cvat_stuff():
    # Model map: top half "sky" (index 0), bottom half "road" (index 1), a void column.
    stuff_map = np.full((H, W), -1, np.int16)
    stuff_map[: H // 2] = 0
    stuff_map[H // 2 :] = 1
    stuff_map[:, :4] = -1
    cvat_road = poly("road", rect(40, 0, 64, 10), ann="road")  # CVAT road painted over the model's sky
    car = poly("car", rect(10, 20, 30, 40), ann="car")
    result = rasterize_image(H, W, [cvat_road, car], CATS, stuff_map=stuff_map, stuff_map_categories=(4, 3))
    cats = label_map(result)
    assert (cats[:, :4] == 0).all()  # model void stays void
    assert (cats[:10, 40:] == 3).all()  # CVAT stuff over model stuff
    assert (cats[20:40, 10:30] == 1).all()  # things over everything
    assert cats[5, 20] == 4 and cats[45, 50] == 3
    by_cat = {s["category_id"]: s for s in result.segments_info}
    assert sorted(by_cat) == [1, 3, 4]  # one road segment: model road + CVAT road
    assert by_cat[3]["area"] == int((cats == 3).sum())
    check_invariants(result)


def test_stuff_map_of_the_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="stuff map"):
        rasterize_image(H, W, [], CATS, stuff_map=np.zeros((H + 1, W), np.int16), stuff_map_categories=(4,))


# ----------------------------------------------------------------------------- bounded work (issue 11)


def _painted(patch) -> np.ndarray:
    got = np.zeros((H, W), bool)
    if patch is not None:
        h, w = patch.mask.shape
        got[patch.top : patch.top + h, patch.left : patch.left + w] = patch.mask
    return got


@pytest.mark.parametrize("far", [2e8, 1e12, 1e300])
def test_far_vertices_are_clipped_to_the_same_pixels(far):
    """Axis-aligned edges far outside: clipping moves them onto the margin, the image is unchanged."""
    half_plane = poly("car", rect(7, -far, far, far))
    patch, warnings = shape_patch(half_plane, H, W)
    np.testing.assert_array_equal(_painted(patch), full_image_polygon([rect(7, -5, W + 5, H + 5)], H, W))
    assert [w.code for w in warnings] == [OUT_OF_BOUNDS]
    everything, _ = shape_patch(poly("car", rect(-far, -far, far, far)), H, W)
    assert _painted(everything).all()


def test_polygons_within_the_margin_are_not_clipped():
    """The clip margin is one image size: moderately outside polygons are rasterised as given."""
    from dataset_scripts.conversion.polygon_clip import clip_polygon

    rng = np.random.default_rng(1)
    for _ in range(50):
        points = np.stack([rng.uniform(-W, 2 * W, 7), rng.uniform(-H, 2 * H, 7)], 1)
        assert clip_polygon(points, -W, -W, 2 * W, H + W) is points


def test_clipped_polygon_stays_inside_the_rectangle_and_keeps_its_inside_part():
    from dataset_scripts.conversion.polygon_clip import clip_polygon

    rng = np.random.default_rng(2)
    for _ in range(100):
        points = rng.uniform(-1e9, 1e9, (int(rng.integers(3, 9)), 2))
        clipped = clip_polygon(points, -10.0, -20.0, 30.0, 40.0)
        if len(clipped):
            assert clipped[:, 0].min() >= -10 and clipped[:, 0].max() <= 30
            assert clipped[:, 1].min() >= -20 and clipped[:, 1].max() <= 40
    square = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]])
    corners = sorted(map(tuple, clip_polygon(square, 10, 10, 20, 20).tolist()))
    assert corners == [(10, 10), (10, 20), (20, 10), (20, 20)]
    assert len(clip_polygon(square, 200, 200, 300, 300)) == 0


def test_an_absurdly_long_outline_is_refused_not_allocated():
    from dataset_scripts.conversion.rasterize import MAX_OUTLINE
    from dataset_scripts.cvat.records import ConversionError

    zigzag = np.zeros((MAX_OUTLINE // W + 10, 2))
    zigzag[:, 0] = np.where(np.arange(len(zigzag)) % 2, -1e6, 1e6)  # every edge crosses the image
    zigzag[:, 1] = np.linspace(0, H, len(zigzag))
    shape = poly("car", tuple(zigzag.ravel().tolist()), ann="zig")
    with pytest.raises(
        ConversionError, match="a.json: image img.jpg, annotation zig: polygon outline longer"
    ):
        shape_patch(shape, H, W, image="img.jpg")


def test_huge_cvat_mask_box_is_decoded_inside_the_image_only():
    side = 200_000  # 4 * 10^10 pixels: decoding the whole box would need 40 GB
    mask = Shape(
        label="car",
        kind="mask",
        source="a.xml",
        annotation_id="0/mask#0",
        mask_box=(-10, -10, side, side),
        mask_counts=(side * 12, side * side - side * 12),  # 12 empty rows, then all set
        z_order=0,
    )
    patch, warnings = shape_patch(mask, H, W)
    expected = np.zeros((H, W), bool)
    expected[2:, :] = True
    np.testing.assert_array_equal(_painted(patch), expected)
    assert [w.code for w in warnings] == [OUT_OF_BOUNDS]
