"""Label identity by COCO-panoptic category id (`dataset_scripts.coco_panoptic`) on the real checkpoint's layout.

`facebook/detr-resnet-50-panoptic`'s config names rows 0-182 with COCO-Stuff names and calls 183-249
`LABEL_<id>` (`tests.hub_standin.HUB_ID2LABEL`, the same table the offline stand-in is built with).
"""

from __future__ import annotations

import logging

import pytest

from dataset_scripts.coco_panoptic import CheckpointLabels, coco_panoptic_categories, coco_panoptic_name
from dataset_scripts.stuff.labeller import stuff_label_ids
from dataset_scripts.stuff.mapping import StuffMappingError, load_stuff_mapping
from finetune.inference.metadata import stuff_label_ids as predictor_stuff_label_ids
from finetune.modeling.loading import ModelSetupError, log_class_mapping, map_class_head_rows
from tests.hub_standin import HUB_ID2LABEL

SITE_CLASSES = {0: "brick", 1: "person", 2: "wall", 3: "ground", 4: "floor", 5: "sky"}
SUGGESTED_CLASS_MAP = {
    "wall": "wall-other-merged",
    "ground": "dirt-merged",
    "floor": "floor-other-merged",
    "sky": "sky-other-merged",
}


def test_the_table_is_panopticapis_133_categories():
    table = coco_panoptic_categories()
    assert len(table) == 133 and min(table) == 1 and max(table) == 200
    assert sum(c.isthing for c in table.values()) == 80
    assert table[199].name == "wall-other-merged" and not table[199].isthing
    assert table[1].name == "person" and table[1].isthing
    assert coco_panoptic_name(194) == coco_panoptic_name("194") == "dirt-merged"
    assert coco_panoptic_name(183) is None and coco_panoptic_name("wall-other") is None


def test_the_hub_layout_resolves_label_ids_through_the_table():
    assert HUB_ID2LABEL[199] == "LABEL_199" and HUB_ID2LABEL[159] == "snow"  # the layout under test
    labels = CheckpointLabels.from_id2label({str(k): v for k, v in HUB_ID2LABEL.items()})
    assert labels.coco_layout
    assert labels.names[199] == "wall-other-merged" and labels.names[187] == "sky-other-merged"
    assert labels.row_of("wall-other-merged") == labels.row_of(199) == labels.row_of("199") == 199
    assert labels.row_of("person") == 1 and labels.row_of("snow") == 159
    # COCO-Stuff rows the panoptic model never predicts: never matched, never offered
    assert HUB_ID2LABEL[173] == "wall-other"
    assert labels.row_of("wall-other") is None and labels.row_of("N/A") is None and labels.row_of(183) is None
    assert "wall-other" not in labels.close_matches("wall-other")
    assert labels.close_matches("wall-other")[0] == "wall-other-merged"
    assert set(labels.rows) == {c.name for c in coco_panoptic_categories().values()}


def test_our_own_checkpoints_keep_their_names():
    labels = CheckpointLabels.from_id2label({0: "brick", 1: "pole", 2: "wall-other-merged"})
    assert not labels.coco_layout
    assert labels.row_of("pole") == 1 and labels.row_of("wall-other-merged") == labels.row_of(199) == 2
    assert labels.row_of("tile") is None


def test_the_suggested_class_map_warm_starts_on_the_hub_layout(caplog):
    rows = map_class_head_rows(SITE_CLASSES, HUB_ID2LABEL, SUGGESTED_CLASS_MAP)
    assert rows == {1: 1, 2: 199, 3: 194, 4: 190, 5: 187}  # brick is new; person by name
    assert map_class_head_rows(SITE_CLASSES, HUB_ID2LABEL, {"wall": 199, "sky": "187"}) == {1: 1, 2: 199, 5: 187}
    with caplog.at_level(logging.INFO, logger="finetune.modeling.loading"):
        log_class_mapping(SITE_CLASSES, HUB_ID2LABEL, rows)
    table = caplog.records[-1].getMessage()
    assert "wall-other-merged (row 199)" in table and "LABEL_" not in table, table


def test_a_class_map_to_a_row_the_model_never_predicts_offers_panoptic_matches_only():
    with pytest.raises(ModelSetupError) as error:
        map_class_head_rows(SITE_CLASSES, HUB_ID2LABEL, {"wall": "wall-other"})
    message = str(error.value)
    assert "'wall-other': ['wall-other-merged'" in message and "'wall-other'," not in message, message


def test_the_shipped_stuff_mapping_covers_the_hub_layout(caplog):
    mapping = load_stuff_mapping()
    labels = CheckpointLabels.from_id2label(HUB_ID2LABEL)
    with caplog.at_level(logging.WARNING):
        fused = stuff_label_ids(labels, mapping, "facebook/detr-resnet-50-panoptic")
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # all 53 stuff labels resolved
    stuff = {i for i, c in coco_panoptic_categories().items() if not c.isthing}
    assert len(mapping.stuff_labels) == 53 and fused == stuff
    assert mapping.index_for(labels.names[199]) == mapping.stuff_names.index("wall")
    assert mapping.index_for(labels.names[194]) == mapping.stuff_names.index("ground")


def test_stuff_mapping_keys_may_be_category_ids(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("targets: [wall, misc]\nstuff: {199: wall, wall-brick: wall}\nthings: misc\n")
    assert load_stuff_mapping(path).stuff_labels == {"wall-other-merged": 0, "wall-brick": 0}
    path.write_text("targets: [wall]\nstuff: {183: wall}\n")
    with pytest.raises(StuffMappingError, match="183 is not a COCO-panoptic category id"):
        load_stuff_mapping(path)
    path.write_text("targets: [wall]\nstuff: {199: wall, wall-other-merged: wall}\n")
    with pytest.raises(StuffMappingError, match="given twice"):
        load_stuff_mapping(path)


def test_the_predictor_fuses_the_hub_checkpoints_stuff_rows():
    class Config:
        id2label = HUB_ID2LABEL

    fused = predictor_stuff_label_ids(Config())
    assert fused == {i for i, c in coco_panoptic_categories().items() if not c.isthing}
