"""Collation, equality with DetrImageProcessor(format="coco_panoptic"), and a seeded DataLoader."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import skip_first_batches
from PIL import Image

from dataset_scripts.panoptic_builder import panoptic_features
from dataset_scripts.panoptic_format import id2rgb
from finetune.data import (
    PanopticCollator,
    PanopticTrainingDataset,
    build_dataloader,
    build_eval_transforms,
    build_image_processor,
    build_train_transforms,
    category_to_label_map,
)

CATEGORIES = [
    {"id": 3, "name": "wall"},
    {"id": 8, "name": "pipe"},
    {"id": 11, "name": "floor"},
]  # gaps on purpose
# Interface 2: the builder's own row features, so that a schema change there is caught here.
FEATURES = panoptic_features(CATEGORIES)


def _row(image_id: int, height: int, width: int, rng: np.random.Generator, empty: bool = False) -> dict:
    ids = np.zeros((height, width), dtype=np.int64)
    segments = []
    if not empty:
        ids[: height // 2] = 1  # wall
        ids[height // 2 + 2 :] = 2  # floor (2 void rows in between)
        y, x = int(rng.integers(0, height - 12)), int(rng.integers(0, width - 12))
        ids[y : y + 10, x : x + 12] = 3  # pipe
        ids[-6:, -6:] = 4  # crowd pipe
        for seg_id, category_id, iscrowd in [(1, 3, 0), (2, 11, 0), (3, 8, 0), (4, 8, 1)]:
            area = int((ids == seg_id).sum())
            segments.append(
                {
                    "id": seg_id,
                    "category_id": category_id,
                    "iscrowd": iscrowd,
                    "area": area,
                    "bbox": [0, 0, 1, 1],
                }
            )
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {
        "image": Image.fromarray(image),
        "panoptic": Image.fromarray(id2rgb(ids)),
        "segments_info": segments,
        "image_id": image_id,
        "file_name": f"{image_id:06d}.png",
        "width": width,
        "height": height,
    }


def _dataset(sizes: list[tuple[int, int]], empty_ids: tuple[int, ...] = ()) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = [_row(i, h, w, rng, empty=i in empty_ids) for i, (h, w) in enumerate(sizes)]
    return datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]}, features=FEATURES)


@pytest.fixture(scope="module")
def hf_split() -> datasets.Dataset:
    return _dataset([(60, 90), (90, 60), (50, 50), (64, 96), (72, 72), (40, 100)], empty_ids=(2,))


def _processor_labels(hf_split, indices, tmp_path, size, max_size):
    """Labels and inputs of DetrImageProcessor(format="coco_panoptic") for the same rows."""
    c2l = category_to_label_map(CATEGORIES)
    annotations = []
    for i in indices:
        row = hf_split[i]
        row["panoptic"].save(tmp_path / row["file_name"])
        segments = [
            dict(s, category_id=c2l[s["category_id"]]) for s in row["segments_info"] if not s["iscrowd"]
        ]
        annotations.append(
            {"image_id": row["image_id"], "file_name": row["file_name"], "segments_info": segments}
        )
    processor = build_image_processor(size, max_size)
    images = [hf_split[i]["image"] for i in indices]
    return processor(images=images, annotations=annotations, masks_path=tmp_path, return_tensors="pt")


def test_batch_shapes_padding_and_normalised_boxes(hf_split):
    dataset = PanopticTrainingDataset(
        hf_split, category_to_label_map(CATEGORIES), build_eval_transforms(64, 160)
    )
    samples = [dataset[i] for i in range(3)]
    batch = PanopticCollator()(samples)
    hp = max(image.shape[1] for image, _ in samples)
    wp = max(image.shape[2] for image, _ in samples)
    assert batch["pixel_values"].shape == (3, 3, hp, wp) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_mask"].shape == (3, hp, wp) and batch["pixel_mask"].dtype == torch.int64
    for (image, target), labels, pixel_mask, pixels in zip(
        samples, batch["labels"], batch["pixel_mask"], batch["pixel_values"], strict=True
    ):
        h, w = image.shape[1:]
        assert labels["size"].tolist() == [h, w]
        assert pixel_mask[:h, :w].all() and pixel_mask.sum() == h * w
        assert (pixels[:, h:, :] == 0).all() and (pixels[:, :, w:] == 0).all()
        n = len(target["class_labels"])
        assert labels["masks"].shape == (n, hp, wp) and labels["masks"].dtype == torch.bool  # 1 byte/pixel
        assert labels["masks"][:, h:, :].sum() == 0 and labels["masks"][:, :, w:].sum() == 0
        assert torch.equal(labels["masks"][:, :h, :w].bool(), target["masks"])
        assert labels["boxes"].shape == (n, 4)
        # cxcywh normalised by the unpadded size -> back to xyxy pixels
        cx, cy, bw, bh = labels["boxes"].unbind(-1)
        xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        assert torch.allclose(xyxy, target["boxes"], atol=1e-4)
    empty = batch["labels"][2]  # the image without segments
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, hp, wp)
    assert empty["class_labels"].shape == (0,)
    # Crowd (segment 4) never becomes a target: 3 non-crowd segments
    assert len(batch["labels"][0]["class_labels"]) == 3


@pytest.mark.parametrize(
    "size",
    [
        120,  # x2 upscale of the 60 px short sides: exact pixel boxes
        100,  # x1.67: a non-integer upscale
        40,  # x0.67: a downscale
        37,  # x0.62: a non-integer downscale with rounded output sizes (55 x 37 px)
    ],
)
def test_equal_to_detr_image_processor(hf_split, tmp_path, size):
    max_size = 400
    indices = [0, 1]  # different sizes: padding differs per image
    dataset = PanopticTrainingDataset(
        hf_split, category_to_label_map(CATEGORIES), build_eval_transforms(size, max_size)
    )
    batch = PanopticCollator()([dataset[i] for i in indices])
    expected = _processor_labels(hf_split, indices, tmp_path, size, max_size)

    assert batch["pixel_values"].shape == expected["pixel_values"].shape
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"], atol=1e-5)
    assert torch.equal(batch["pixel_mask"], expected["pixel_mask"])
    for ours, theirs, pixel_mask in zip(
        batch["labels"], expected["labels"], batch["pixel_mask"], strict=True
    ):
        assert torch.equal(ours["class_labels"], theirs["class_labels"])
        assert torch.equal(ours["masks"].bool(), theirs["masks"])
        assert torch.equal(ours["image_id"], theirs["image_id"])
        assert torch.equal(ours["orig_size"], theirs["orig_size"])
        # Box conventions, both documented in PanopticCollator:
        # - the processor rescales normalised boxes to the padded size, we keep DETR's unpadded size;
        # - the processor takes the box of the original mask (x2/y2 on the last pixel's index) and scales it,
        #   ours is the box of the resized mask with x2/y2 on the last pixel's far edge: one original pixel
        #   (scale_x, scale_y resized pixels) further. Nearest-exact resizing moves an edge by at most half a
        #   resized pixel, and by none at an integer scale.
        h, w = ours["size"].tolist()
        orig_h, orig_w = ours["orig_size"].tolist()
        scale_y, scale_x = h / orig_h, w / orig_w
        hp, wp = pixel_mask.shape
        theirs_px = theirs["boxes"] * torch.tensor([wp, hp, wp, hp])
        ours_px = ours["boxes"] * torch.tensor([w, h, w, h])
        to_xyxy = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]])
        far_edge = torch.tensor([0, 0, scale_x, scale_y])
        tolerance = 1e-3 if scale_x == scale_y == int(scale_x) else 0.5 + 1e-3
        assert torch.allclose(ours_px @ to_xyxy, theirs_px @ to_xyxy + far_edge, atol=tolerance)
    if size == 120:
        assert scale_x == scale_y == 2.0


def test_train_dataset_keeps_targets_consistent(hf_split):
    transforms = build_train_transforms(
        scales=[48, 56, 64], max_size=120, crop_resize_scales=[50, 60], crop_min_size=30, crop_max_size=45
    )
    dataset = PanopticTrainingDataset(hf_split, category_to_label_map(CATEGORIES), transforms)
    batch = PanopticCollator(mask_dtype=torch.bool)([dataset[(i, 100 + i)] for i in range(len(hf_split))])
    for labels in batch["labels"]:
        assert labels["masks"].dtype == torch.bool
        assert ((labels["boxes"] > 0) & (labels["boxes"] <= 1)).all()
        assert labels["masks"].flatten(1).any(dim=1).all()
    # The same (index, seed) key gives the same augmented sample; the global RNG is untouched.
    state = torch.get_rng_state()
    a, b = dataset[(3, 7)], dataset[(3, 7)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(batch["pixel_values"], [lab["image_id"].item() for lab in batch["labels"]]) for batch in loader]


def _same(run_a, run_b) -> bool:
    return all(torch.equal(pa, pb) and ia == ib for (pa, ia), (pb, ib) in zip(run_a, run_b, strict=True))


def test_dataloader_with_workers_is_deterministic_and_resumable(hf_split):
    transforms = build_train_transforms(
        scales=[48, 56, 64], max_size=120, crop_resize_scales=[50, 60], crop_min_size=30, crop_max_size=45
    )
    dataset = PanopticTrainingDataset(hf_split, category_to_label_map(CATEGORIES), transforms)

    def loader(seed, workers):
        return build_dataloader(dataset, 2, True, workers, True, PanopticCollator(), seed)

    two_workers = loader(0, 2)
    epoch0, epoch1 = _epoch(two_workers, 0), _epoch(two_workers, 1)
    assert len(epoch0) == 3
    assert sorted(i for _, ids in epoch0 for i in ids) == list(range(len(hf_split)))
    assert not _same(epoch0, epoch1), "epochs should differ in order or augmentation"
    # Same seed: same batches, whatever the number of workers.
    main_process = loader(0, 0)
    assert _same(epoch1, _epoch(main_process, 1))
    assert not _same(epoch0, _epoch(loader(1, 0), 0))
    # Resume mid-epoch: skipping the first batch gives the remaining batches of that epoch.
    main_process.sampler.set_epoch(1)
    resumed = [
        (b["pixel_values"], [lab["image_id"].item() for lab in b["labels"]])
        for b in skip_first_batches(main_process, 1)
    ]
    assert _same(epoch1[1:], resumed)
