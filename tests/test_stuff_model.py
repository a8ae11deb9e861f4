"""Stuff pseudo-labels: the mapping file, the pure mapping step, and the cached, resumable model run.

The model runs use a tiny random ``DetrForSegmentation`` saved to ``tmp_path`` (no download). A
random model rarely predicts anything above DETR's threshold, so the end-to-end mapping is also
exercised with a forward pass whose outputs the test controls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DetrForObjectDetection, DetrForSegmentation, DetrImageProcessor
from transformers.models.detr.modeling_detr import DetrSegmentationOutput

from dataset_scripts import stuff_model
from dataset_scripts.stuff_model import (
    DEFAULT_MAPPING_PATH,
    StuffCacheError,
    StuffMapping,
    StuffMappingError,
    StuffModelError,
    cache_path,
    load_stuff_map,
    load_stuff_mapping,
    map_panoptic_prediction,
    pseudo_label_stuff,
)
from finetune.inference import core as inference_core
from tests.conftest import tiny_detr_config

ID2LABEL = {
    0: "N/A",
    1: "person",
    2: "car",
    3: "sky-other-merged",
    4: "wall-brick",
    5: "floor-wood",
    6: "tree-merged",
}
SKY, PERSON, WALL = 3, 1, 4


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _small_mapping(things: str = "misc") -> StuffMapping:
    return StuffMapping(
        stuff_names=["misc", "sky", "wall", "floor"],
        stuff_labels={"sky-other-merged": 1, "wall-brick": 2, "floor-wood": 3, "tree-merged": None},
        things_index=None if things is None else 0,
        ignore_labels=frozenset({"N/A"}),
    )


# ----------------------------------------------------------------------------------------------
# Mapping file
# ----------------------------------------------------------------------------------------------


def test_default_mapping_loads_16_classes():
    mapping = load_stuff_mapping()
    assert mapping.source == str(DEFAULT_MAPPING_PATH)
    assert len(mapping.stuff_names) == 16
    assert mapping.stuff_names[0] == "misc"
    assert mapping.index_for("wall-brick") == mapping.stuff_names.index("wall")
    assert mapping.index_for("person") == mapping.stuff_names.index("misc")
    assert mapping.index_for("N/A") is None
    assert mapping.is_stuff_label("sky-other-merged") and not mapping.is_stuff_label("person")


@pytest.mark.shared
def test_default_mapping_matches_coco_supercategories(shared_data):
    categories = json.loads(
        (shared_data / "panopticapi_sample" / "panoptic_coco_categories.json").read_text(encoding="utf-8")
    )

    def broad(supercategory: str) -> str:  # "raw-material" -> rawmaterial, "food-stuff" -> food
        return supercategory.removesuffix("-stuff").replace("-", "")

    mapping = load_stuff_mapping()
    stuff = [c for c in categories if not c["isthing"]]
    assert len(stuff) == 53
    assert set(mapping.stuff_labels) == {c["name"] for c in stuff}
    for cat in stuff:
        assert mapping.index_for(cat["name"]) == mapping.stuff_names.index(broad(cat["supercategory"])), cat
    for cat in categories:
        if cat["isthing"]:
            assert mapping.index_for(cat["name"]) == mapping.stuff_names.index("misc"), cat
    assert set(mapping.stuff_names) == {broad(c["supercategory"]) for c in stuff} | {"misc"}
    assert len(mapping.stuff_names) == 16


def test_mapping_things_to_void_and_overrides(tmp_path):
    path = _write_yaml(
        tmp_path,
        """
        targets: [sky, furniture]
        stuff: {sky-other-merged: sky, table-merged: furniture, wall-brick: null}
        things: null
        thing_overrides: {dining table: furniture}
        """,
    )
    mapping = load_stuff_mapping(path)
    assert mapping.stuff_names == ["sky", "furniture"]
    assert mapping.index_for("person") is None
    assert mapping.index_for("dining table") == 1
    assert mapping.index_for("wall-brick") is None and mapping.is_stuff_label("wall-brick")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "targets: [sky]\nstuff: {sky-other-merged: skies}\n",
            "stuff.sky-other-merged: unknown target 'skies'",
        ),
        ("targets: [sky]\nstuff: {sky-other-merged: sky}\nthings: misc\n", "things: unknown target 'misc'"),
        ("targets: [sky]\nstuff: {a: sky}\nthing_overrides: {person: wall}\n", "thing_overrides.person"),
        ("targets: [sky]\nstuff: {a: sky\n", "malformed YAML"),
        ("targets: [sky]\nstuff: {a: sky}\nthingz: misc\n", "unknown key(s) ['thingz']"),
        ("stuff: {a: sky}\n", "missing key 'targets'"),
        ("targets: [sky, sky]\nstuff: {a: sky}\n", "more than once"),
        ("targets: [sky]\nstuff: {a: sky}\nthing_overrides: {a: sky}\n", "are stuff labels"),
        ("targets: [sky]\nstuff: {}\n", "'stuff' is empty"),
        ("- sky\n", "expected a YAML mapping"),
    ],
)
def test_mapping_validation_names_file_and_key(tmp_path, text, needle):
    path = _write_yaml(tmp_path, text)
    with pytest.raises(StuffMappingError) as info:
        load_stuff_mapping(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_mapping_missing_file(tmp_path):
    with pytest.raises(StuffMappingError, match="cannot read"):
        load_stuff_mapping(tmp_path / "absent.yaml")


def test_mapping_fingerprint_ignores_comments_but_not_targets(tmp_path):
    a = load_stuff_mapping(_write_yaml(tmp_path, "targets: [sky, misc]\nstuff: {s: sky}\nthings: misc\n"))
    b = load_stuff_mapping(
        _write_yaml(tmp_path, "# note\ntargets: [sky, misc]\nstuff: {s: sky}  # x\nthings: misc\n")
    )
    c = load_stuff_mapping(_write_yaml(tmp_path, "targets: [sky, misc]\nstuff: {s: sky}\nthings: null\n"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# ----------------------------------------------------------------------------------------------
# Pure mapping step
# ----------------------------------------------------------------------------------------------


def test_map_panoptic_prediction_hand_made():
    segmentation = np.array(
        [
            [1, 1, 2, 2],
            [1, 1, 2, 2],
            [3, 3, 0, 4],
            [5, 5, 0, 4],
        ]
    )
    segments = [
        {"id": 1, "label_id": SKY},  # stuff -> its target
        {"id": 2, "label_id": PERSON},  # thing -> misc
        {"id": 3, "label_id": WALL},
        {"id": 4, "label_id": 0},  # "N/A" -> void
        {"id": 5, "label_id": 6},  # stuff mapped to null -> void
    ]
    out = map_panoptic_prediction(segmentation, segments, ID2LABEL, _small_mapping())
    assert out.dtype == np.int16 and out.shape == (4, 4)
    expected = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [2, 2, -1, -1],
            [-1, -1, -1, -1],
        ]
    )
    np.testing.assert_array_equal(out, expected)

    void_things = map_panoptic_prediction(segmentation, segments, ID2LABEL, _small_mapping(things=None))
    assert (void_things[segmentation == 2] == -1).all()
    assert (void_things[segmentation == 1] == 1).all()


def test_map_panoptic_prediction_empty_and_bad_label():
    empty = map_panoptic_prediction(np.full((3, 5), -1), [], ID2LABEL, _small_mapping())
    assert (empty == -1).all() and empty.shape == (3, 5)
    with pytest.raises(ValueError, match="label id 42"):
        map_panoptic_prediction(np.ones((2, 2)), [{"id": 1, "label_id": 42}], ID2LABEL, _small_mapping())


def test_cache_path_is_safe_and_distinct(tmp_path):
    a = cache_path(tmp_path, "train/a b:c?.jpg")
    b = cache_path(tmp_path, "val/a b:c?.jpg")
    assert a != b and a.parent == b.parent == tmp_path / "maps"
    assert "/" not in a.name and ":" not in a.name and "?" not in a.name and " " not in a.name


# ----------------------------------------------------------------------------------------------
# Model run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_detr_panoptic")
    config = tiny_detr_config(num_labels=len(ID2LABEL), id2label=ID2LABEL)
    DetrForSegmentation(config).save_pretrained(folder)
    DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96}
    ).save_pretrained(folder)
    return folder


@pytest.fixture
def images(tmp_path) -> list[tuple[str, Path]]:
    """Three tiny photos: landscape, portrait, and a landscape file whose EXIF says 'rotate 90°'."""
    folder = tmp_path / "imgs" / "sub dir"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for name, (w, h) in [("a.png", (60, 40)), ("b.png", (30, 50))]:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
        out.append((f"train/{name}", folder / name))
    rotated = Image.fromarray(rng.integers(0, 255, (24, 48, 3), dtype=np.uint8))  # stored 48x24
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown rotated by 90°: upright 24 wide, 48 high
    rotated.save(folder / "c.jpg", exif=exif)
    out.append(("train/c:rot.jpg", folder / "c.jpg"))
    return out


UPRIGHT_SHAPES = {"train/a.png": (40, 60), "train/b.png": (50, 30), "train/c:rot.jpg": (48, 24)}


@pytest.fixture
def forward_counter(monkeypatch):
    """Counts forward passes of the model (the inference core runs `model.detr` once per batch, then the
    mask head on the selected queries; the real forward still runs)."""
    calls = []
    real_forward = DetrForObjectDetection.forward

    def spy(self, *args, **kwargs):
        calls.append(kwargs["pixel_values"].shape[0])
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(DetrForObjectDetection, "forward", spy)
    return calls


def test_pseudo_label_stuff_caches_and_resumes(tmp_path, tiny_model_dir, images, forward_counter):
    mapping = load_stuff_mapping()
    cache = tmp_path / "cache"
    pseudo_label_stuff(images, str(tiny_model_dir), mapping, cache, batch_size=2, device="cpu", threshold=0.0)
    assert forward_counter == [2, 1]
    assert len(list((cache / "maps").glob("*.npz"))) == 3
    for key, _ in images:
        stuff = load_stuff_map(cache, key)
        assert stuff.dtype == np.int16
        assert stuff.shape == UPRIGHT_SHAPES[key]
        assert stuff.min() >= -1 and stuff.max() < len(mapping.stuff_names)

    # Everything cached: the model is not even run.
    pseudo_label_stuff(images, str(tiny_model_dir), mapping, cache, batch_size=2, device="cpu", threshold=0.0)
    assert forward_counter == [2, 1]

    # A changed threshold (or mapping, or model) recomputes.
    pseudo_label_stuff(
        images[:1], str(tiny_model_dir), mapping, cache, batch_size=2, device="cpu", threshold=0.5
    )
    assert forward_counter == [2, 1, 1]
    with pytest.raises(StuffCacheError, match="another model, mapping or threshold"):
        load_stuff_map(cache, images[1][0])
    with pytest.raises(StuffCacheError, match="no cached stuff map"):
        load_stuff_map(cache, "never/seen.jpg")


def test_pseudo_label_stuff_interrupted_run_resumes(tmp_path, tiny_model_dir, images, forward_counter):
    mapping = load_stuff_mapping()
    cache = tmp_path / "cache"
    loaded = []

    def failing_loader(path: Path) -> Image.Image:
        loaded.append(path)
        if len(loaded) > 2:  # the second batch fails
            raise KeyboardInterrupt
        return stuff_model.default_load_image(path)

    with pytest.raises(KeyboardInterrupt):
        pseudo_label_stuff(
            images, str(tiny_model_dir), mapping, cache, batch_size=2, load_image=failing_loader
        )
    assert forward_counter == [2]
    assert load_stuff_map(cache, images[0][0]).shape == UPRIGHT_SHAPES[images[0][0]]
    assert not cache_path(cache, images[2][0]).exists()
    assert not [p for p in (cache / "maps").iterdir() if p.suffix != ".npz"]  # no temp files left

    pseudo_label_stuff(images, str(tiny_model_dir), mapping, cache, batch_size=2)
    assert forward_counter == [2, 1]
    assert load_stuff_map(cache, images[2][0]).shape == UPRIGHT_SHAPES[images[2][0]]


def _controlled_forward(self, pixel_values, pixel_mask=None, **kwargs):
    """Hand-made outputs: sky over the top half of each picture, a person below, a wall on the padding.

    Query 0 = sky, 1 = person, 2 = wall-brick, the rest = no object. The masks are at 1/4 of the
    padded input, like DETR's; a mask cell belongs to the picture when it starts inside it. If the
    post-processing did not crop the batch padding, the wall would show up in the smaller images
    and the sky/person boundary would move.
    """
    batch, _, height, width = pixel_values.shape
    mask_h, mask_w = -(-height // 4), -(-width // 4)
    num_queries = self.config.num_queries
    logits = torch.full((batch, num_queries, self.config.num_labels + 1), -20.0)
    logits[:, :, -1] = 20.0  # no object
    for query, label in enumerate([SKY, PERSON, WALL]):
        logits[:, query, -1] = -20.0
        logits[:, query, label] = 20.0
    masks = torch.full((batch, num_queries, mask_h, mask_w), -20.0)
    rows = torch.arange(mask_h)[:, None].expand(mask_h, mask_w) * 4.0  # first input row of each cell
    cols = torch.arange(mask_w)[None, :].expand(mask_h, mask_w) * 4.0
    for i in range(batch):
        valid = pixel_mask[i].bool()
        h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
        inside = (rows < h) & (cols < w)
        masks[i, 0][inside & (rows + 2 < h / 2)] = 20.0
        masks[i, 1][inside & (rows + 2 >= h / 2)] = 20.0
        masks[i, 2][~inside] = 20.0
    return DetrSegmentationOutput(logits=logits, pred_masks=masks)


@pytest.mark.parametrize("things", ["misc", None])
def test_pseudo_label_stuff_maps_controlled_outputs(tmp_path, tiny_model_dir, images, monkeypatch, things):
    monkeypatch.setattr(DetrForSegmentation, "forward", _controlled_forward)
    real_predict_batch = inference_core.predict_batch  # the hand-made outputs replace the full forward
    monkeypatch.setattr(
        inference_core,
        "predict_batch",
        lambda *args, **kwargs: real_predict_batch(*args, **{**kwargs, "full_forward": True}),
    )
    path = _write_yaml(
        tmp_path,
        f"""
        targets: [misc, sky, wall]
        stuff: {{sky-other-merged: sky, wall-brick: wall}}
        things: {things or "null"}
        """,
    )
    mapping = load_stuff_mapping(path)
    cache = tmp_path / "cache"
    pseudo_label_stuff(images, str(tiny_model_dir), mapping, cache, batch_size=3, device="cpu")
    below = 0 if things else -1
    for key, _ in images:
        stuff = load_stuff_map(cache, key)
        height = stuff.shape[0]
        assert stuff.shape == UPRIGHT_SHAPES[key]
        assert set(np.unique(stuff)) == {1, below}, key  # sky + person (misc or void), never the wall
        rows_sky = (stuff == 1).all(axis=1)
        # The sky/person boundary is at mid-height of the upright picture (± one 4-px mask cell
        # of the ~1.6-2x larger network input).
        boundary = int(rows_sky.sum())
        assert rows_sky[:boundary].all()
        assert abs(boundary - height / 2) <= 3, (key, boundary, height)
        assert (stuff[boundary + 1 :] == below).all()


def test_hub_id_offline_fails_fast_with_hint(tmp_path, images, monkeypatch, network_attempts):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StuffModelError, match="--stuff-from-model") as info:
        pseudo_label_stuff(images, "facebook/detr-resnet-50-panoptic", load_stuff_mapping(), tmp_path / "c")
    assert "facebook/detr-resnet-50-panoptic" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    assert network_attempts == []  # fails from the offline flag, not after (retried) connection attempts


def test_hub_id_unreachable_fails_fast_with_hint(tmp_path, images, monkeypatch, network_attempts):
    """Not declared offline, but the network is down: one failed request, no download retries."""
    calls = []

    def unreachable(repo_id, timeout=None, **kwargs):
        calls.append((repo_id, timeout))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(StuffModelError, match="Name or service not known.*--stuff-from-model"):
        pseudo_label_stuff(images, "facebook/detr-resnet-50-panoptic", load_stuff_mapping(), tmp_path / "c")
    assert calls == [("facebook/detr-resnet-50-panoptic", 10)]
    assert network_attempts == []  # no request besides that one (which the test intercepted)


def test_missing_model_folder_and_wrong_labels(tmp_path, tiny_model_dir, images):
    with pytest.raises(StuffModelError, match="no such stuff model folder"):
        pseudo_label_stuff(images, str(tmp_path / "nope" / "model"), load_stuff_mapping(), tmp_path / "c")
    unrelated = StuffMapping(stuff_names=["x"], stuff_labels={"not-a-coco-label": 0}, things_index=0)
    with pytest.raises(StuffModelError, match="none of its labels"):
        pseudo_label_stuff(images, str(tiny_model_dir), unrelated, tmp_path / "c2", device="cpu")


def test_duplicate_keys_rejected(tmp_path, images):
    with pytest.raises(ValueError, match="duplicate image keys"):
        pseudo_label_stuff([images[0], images[0]], "unused", load_stuff_mapping(), tmp_path / "c")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def test_cli_runs_as_file(tmp_path, tiny_model_dir, images, repo_root):
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "dataset_scripts/stuff_model.py",
        str(images[0][1].parent),
        "--cache-dir",
        str(cache),
    ]
    command += ["--model", str(tiny_model_dir), "--device", "cpu", "--threshold", "0", "--batch-size", "2"]
    done = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stuff classes over 3 images" in done.stderr
    # Keys are base names, like the converter's: its cache lookups find these maps.
    assert load_stuff_map(cache, "a.png").shape == (40, 60)
    assert load_stuff_map(cache, "c.jpg").shape == (48, 24)
    shares = stuff_model.class_shares(cache, ["a.png", "b.png", "c.jpg"], load_stuff_mapping().stuff_names)
    assert sum(share for _, _, share in shares) == pytest.approx(100.0)
    assert sum(n for _, n, _ in shares) >= 3  # every image contains some class (or void)


def test_cli_errors_exit_non_zero(tmp_path, images, caplog):
    bad = _write_yaml(tmp_path, "targets: [sky]\nstuff: {sky-other-merged: skies}\n")
    assert (
        stuff_model.main([str(images[0][1]), "--cache-dir", str(tmp_path / "c"), "--mapping", str(bad)]) == 2
    )
    assert str(bad) in caplog.text and "skies" in caplog.text
    assert stuff_model.main([str(tmp_path / "absent"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "no such file or folder" in caplog.text


def test_collect_images_rejects_shared_base_names(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / sub / "same.png")
    (tmp_path / "x" / "notes.txt").write_text("not a picture")
    assert [key for key, _ in stuff_model.collect_images([tmp_path / "x"])] == ["same.png"]
    with pytest.raises(ValueError, match="share the name 'same.png'"):
        stuff_model.collect_images([tmp_path])


def test_model_identity_follows_folder_content(tmp_path, tiny_model_dir):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, moved)
    assert stuff_model.model_identity(str(moved)) == stuff_model.model_identity(str(tiny_model_dir))
    config = json.loads((moved / "config.json").read_text())
    config["id2label"]["1"] = "bicycle"
    (moved / "config.json").write_text(json.dumps(config))
    assert stuff_model.model_identity(str(moved)) != stuff_model.model_identity(str(tiny_model_dir))
    assert (
        stuff_model.model_identity("facebook/detr-resnet-50-panoptic") == "facebook/detr-resnet-50-panoptic"
    )
