"""`finetune.evaluation.loop.evaluate`: an oracle model that outputs the ground truth scores ~1 (box mAP and
PQ), so coordinates, padding crops, label <-> category mapping and stuff fusion are wired correctly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from dataset_scripts.panoptic_builder import build_hf_dataset, load_categories
from finetune.data.collate import PanopticCollator
from finetune.data.dataset import PanopticTrainingDataset, category_to_label_map
from finetune.data.loading import build_image_processor
from finetune.data.transforms import build_eval_transforms
from finetune.evaluation.loop import EvalContext, evaluate, shard_for_process
from tests.train_runs import REPO_ROOT, SAMPLE_EXPORTS, sample_export_args


class OracleModel(torch.nn.Module):
    """Returns, batch after batch, logits/boxes/masks equal to the targets of `batches`."""

    def __init__(self, batches: list[dict], categories: list[dict], num_queries: int = 12):
        super().__init__()
        self.batches = iter(batches)
        self.num_labels = len(categories)
        self.num_queries = num_queries
        # as training builds it: labels in category order, the dataset's category ids
        self.config = SimpleNamespace(
            id2label={i: c["name"] for i, c in enumerate(categories)},
            category_ids=[int(c["id"]) for c in categories],
        )

    @property
    def detr(self) -> OracleModel:  # box-only evaluation calls model.detr
        return self

    def forward(self, pixel_values, pixel_mask):
        batch = next(self.batches)
        size, queries = len(batch["labels"]), self.num_queries
        height, width = pixel_values.shape[-2:]
        logits = torch.full((size, queries, self.num_labels + 1), -20.0)
        logits[..., -1] = 20.0  # unused queries: no object
        boxes = torch.full((size, queries, 4), 0.5)
        masks = torch.full((size, queries, (height + 3) // 4, (width + 3) // 4), -20.0)
        for i, target in enumerate(batch["labels"]):
            n = len(target["class_labels"])
            assert n <= queries
            logits[i, torch.arange(n), -1] = -20.0
            logits[i, torch.arange(n), target["class_labels"]] = 20.0
            boxes[i, :n] = target["boxes"]
            full = torch.nn.functional.interpolate(
                target["masks"][None].float(), size=masks.shape[-2:], mode="nearest"
            )
            masks[i, :n] = full[0] * 40.0 - 20.0
        return SimpleNamespace(logits=logits, pred_boxes=boxes, pred_masks=masks)


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    args = sample_export_args(root)
    exports = (
        args[1].split(",") if args else [str(REPO_ROOT / "sample_data" / name) for name in SAMPLE_EXPORTS]
    )
    options = ConversionOptions(stuff_labels=("floor", "wall", "sky", "ground"), val_ratio=0.25, seed=0)
    convert_exports(exports, root / "panoptic", options)
    return build_hf_dataset(root / "panoptic", cache_dir=root / "arrow")


def test_oracle_predictions_score_perfectly(sample_dataset):
    categories = load_categories(sample_dataset)
    split = sample_dataset["val"].select(range(4))
    processor = build_image_processor(96, 128)
    dataset = PanopticTrainingDataset(
        split, category_to_label_map(categories), build_eval_transforms(96, 128)
    )
    accelerator = Accelerator(cpu=True)
    # batches of 2 images of different sizes: exercises the padding crop of pred_masks
    loader = DataLoader(shard_for_process(dataset, accelerator), batch_size=2, collate_fn=PanopticCollator())
    model = OracleModel(list(loader), categories)
    context = EvalContext(
        hf_split=split,
        categories=categories,
        image_processor=processor,
        stuff_label_ids={i for i, c in enumerate(categories) if not c["isthing"]},
        threshold=0.5,
        full_forward=True,  # the oracle replaces the whole forward
    )
    results = evaluate(model, loader, accelerator, context, panoptic=True)
    assert results["num_images"] == 4
    assert results["box_map_50"] > 0.95
    assert results["pq"] > 0.85 and results["rq"] > 0.95
    # Every segment is recognised; quality is bounded by the H/4 mask resolution (24 px here) on small things.
    assert results["rq_things"] > 0.9 and results["rq_stuff"] > 0.95
    assert results["pq_stuff"] > 0.85 and results["pq_things"] > 0.6


def test_labels_of_another_category_table_are_refused(sample_dataset):
    from finetune.inference import LabelMismatchError

    categories = load_categories(sample_dataset)
    model = OracleModel([], categories)
    model.config.category_ids = model.config.category_ids[::-1]  # a model built for another table
    context = EvalContext(
        hf_split=sample_dataset["val"].select(range(1)),
        categories=categories,
        image_processor=build_image_processor(96, 128),
        stuff_label_ids=set(),
    )
    with pytest.raises(LabelMismatchError, match=f"model label 0 '{categories[0]['name']}' is category id"):
        evaluate(model, [], Accelerator(cpu=True), context, panoptic=True)


def test_selected_queries_evaluate_as_the_full_forward(sample_dataset, monkeypatch):
    """The loop's default path (mask head on the selected queries) scores the maps of the full forward."""
    from transformers import DetrForSegmentation

    from finetune.evaluation.panoptic_quality import PQAccumulator
    from tests.conftest import tiny_detr_config

    categories = load_categories(sample_dataset)
    split = sample_dataset["val"].select(range(4))
    dataset = PanopticTrainingDataset(
        split, category_to_label_map(categories), build_eval_transforms(96, 128)
    )
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(shard_for_process(dataset, accelerator), batch_size=2, collate_fn=PanopticCollator())
    torch.manual_seed(0)
    config = tiny_detr_config(
        num_labels=len(categories), id2label={i: c["name"] for i, c in enumerate(categories)}, num_queries=20
    )
    config.category_ids = [int(c["id"]) for c in categories]
    model = DetrForSegmentation(config).eval()
    with torch.no_grad():  # confident, varied classes: segments to score
        model.detr.class_labels_classifier.weight *= 100.0
    scored: dict[bool, list] = {False: [], True: []}
    real_update = PQAccumulator.update
    results = {}
    for full_forward in (False, True):

        def spy(self, pred_ids, pred_segments, *args, _seen=scored[full_forward], **kwargs):
            _seen.append((pred_ids.copy(), list(pred_segments)))
            return real_update(self, pred_ids, pred_segments, *args, **kwargs)

        monkeypatch.setattr(PQAccumulator, "update", spy)
        context = EvalContext(
            hf_split=split,
            categories=categories,
            image_processor=build_image_processor(96, 128),
            stuff_label_ids={i for i, c in enumerate(categories) if not c["isthing"]},
            threshold=0.5,
            overlap_mask_area_threshold=0.0,
            full_forward=full_forward,
        )
        results[full_forward] = evaluate(model, loader, accelerator, context, panoptic=True)
    assert results[False] == results[True]
    assert results[False]["num_images"] == 4
    assert len(scored[False]) == len(scored[True]) == 4
    for (fast_ids, fast_segments), (full_ids, full_segments) in zip(scored[False], scored[True], strict=True):
        np.testing.assert_array_equal(fast_ids, full_ids)
        assert fast_segments == full_segments
    assert sum(len(segments) for _, segments in scored[False]) > 0  # something to compare


def _oracle_setup(sample_dataset):
    categories = load_categories(sample_dataset)
    split = sample_dataset["val"].select(range(4))
    dataset = PanopticTrainingDataset(split, category_to_label_map(categories), build_eval_transforms(96, 128))
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(shard_for_process(dataset, accelerator), batch_size=2, collate_fn=PanopticCollator())
    context = EvalContext(
        hf_split=split,
        categories=categories,
        image_processor=build_image_processor(96, 128),
        stuff_label_ids={i for i, c in enumerate(categories) if not c["isthing"]},
        threshold=0.5,
        full_forward=True,
    )
    return OracleModel(list(loader), categories), loader, accelerator, context


def test_ground_truth_is_read_without_decoding_the_photo(sample_dataset, monkeypatch):
    import PIL.Image

    from finetune.evaluation import loop

    _, _, _, context = _oracle_setup(sample_dataset)
    opened = []
    real_open = PIL.Image.open

    def counting_open(*args, **kwargs):
        image = real_open(*args, **kwargs)
        opened.append(image.size)
        return image

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    image_id = int(context.hf_split[0]["image_id"])
    opened.clear()
    gt_ids, segments = loop._ground_truth(context, image_id)
    assert len(opened) == 1  # the panoptic PNG only
    assert gt_ids.shape == opened[0][::-1] and segments


def test_only_model_inputs_go_to_the_device_and_scoring_runs_in_the_background(sample_dataset, monkeypatch):
    """Targets (full-size masks) stay on the host; the PQ/box statistics are computed on a scoring thread,
    in image order (the oracle still scores as in `test_oracle_predictions_score_perfectly`)."""
    import threading

    from finetune.evaluation import loop
    from finetune.evaluation.panoptic_quality import PQAccumulator

    model, loader, accelerator, context = _oracle_setup(sample_dataset)
    sent, threads, order = [], [], []
    real_send, real_update = loop.send_to_device, PQAccumulator.update

    def recording_send(batch, device):
        sent.append(set(batch))
        return real_send(batch, device)

    def spy(self, *args, image_id, **kwargs):
        threads.append(threading.current_thread())
        order.append(image_id)
        return real_update(self, *args, image_id=image_id, **kwargs)

    monkeypatch.setattr(loop, "send_to_device", recording_send)
    monkeypatch.setattr(PQAccumulator, "update", spy)
    results = evaluate(model, loader, accelerator, context, panoptic=True)
    assert sent == [{"pixel_values", "pixel_mask"}] * 2
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert order == [int(i) for i in context.hf_split["image_id"]]
    assert results["num_images"] == 4 and results["pq"] > 0.85


def test_the_evaluation_loader_keeps_its_workers(tmp_path, fresh_accelerate_state):
    from finetune.config import parse_config
    from finetune.training.run import build_run, setup_accelerator
    from tests.train_runs import CI_CONFIG

    config = parse_config(
        ["--config", str(CI_CONFIG), "--output_dir", str(tmp_path), "--num_workers", "1", *sample_export_args(tmp_path)]
    )
    parts = build_run(config, setup_accelerator(config), tmp_path)
    assert parts.session.eval_loader.persistent_workers
