"""The two training stages: freezing, optimizer groups, and the stage losses against transformers' forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DetrForSegmentation
from transformers.loss import loss_for_object_detection

from finetune.config import STAGE_NAMES
from finetune.modeling.stages import (
    compute_stage_loss,
    freeze_for_stage,
    is_trainable,
    param_groups,
)

HEIGHT, WIDTH = 96, 64  # multiples of 32: masks at H/4 x W/4 = 24 x 16
MASK_PREFIXES = ("mask_head.", "bbox_attention.")


def make_model(make_tiny_detr_config, seed: int = 0, **overrides) -> DetrForSegmentation:
    torch.manual_seed(seed)
    config = make_tiny_detr_config(num_labels=5, auxiliary_loss=True, decoder_layers=2, **overrides)
    return DetrForSegmentation(config)


def make_batch(num_objects: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Random images (the 2nd padded on the right) and random targets: valid boxes, random masks."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(num_objects)
    pixel_values = torch.randn(batch, 3, HEIGHT, WIDTH, generator=generator)
    pixel_mask = torch.ones(batch, HEIGHT, WIDTH, dtype=torch.long)
    if batch > 1:
        pixel_mask[1, :, WIDTH // 2 :] = 0
    labels = []
    for n in num_objects:
        centers = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        labels.append(
            {
                "class_labels": torch.randint(0, 5, (n,), generator=generator),
                "boxes": torch.cat([centers, sizes], dim=1),
                "masks": (torch.rand(n, HEIGHT, WIDTH, generator=generator) > 0.5).float(),
            }
        )
    return pixel_values, pixel_mask, labels


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_steps(model: DetrForSegmentation, stage: str, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, stage, lr=1e-3, backbone_lr=1e-4, weight_decay=1e-4))
    for step in range(steps):
        pixel_values, pixel_mask, labels = make_batch([3, 2], seed=step)
        loss, _ = compute_stage_loss(model, stage, pixel_values, pixel_mask, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_freeze_for_stage_sets_requires_grad(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config)
    names = [name for name, _ in model.named_parameters()]

    trainable = freeze_for_stage(model, "detection")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(flags[n] for n in names if n.startswith(MASK_PREFIXES))
    assert all(flags[n] for n in names if n.startswith("detr.") and "backbone" not in n)
    # ResNet stem and layer1 stay frozen (DETR trains layer2-4 of the backbone)
    assert not flags["detr.model.backbone.model.conv1.weight"]
    assert not any(flags[n] for n in names if ".layer1." in n)
    assert all(flags[n] for n in names if ".layer4." in n)

    trainable = freeze_for_stage(model, "masks")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(flags[n] == n.startswith(MASK_PREFIXES) for n in names)


def test_is_trainable_hf_resnet_names():
    assert is_trainable("detr.model.backbone.model.encoder.stages.2.layers.0.convolution.weight", "detection")
    assert not is_trainable(
        "detr.model.backbone.model.encoder.stages.0.layers.0.convolution.weight", "detection"
    )
    assert not is_trainable("detr.model.backbone.model.embedder.embedder.convolution.weight", "detection")
    assert is_trainable("detr.model.backbone.model.stem.weight", "detection", resnet_backbone=False)
    with pytest.raises(ValueError, match="unknown stage"):
        is_trainable("mask_head.conv1.conv.weight", "boxes")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_param_groups_hold_only_trainable_parameters(make_tiny_detr_config, stage):
    model = make_model(make_tiny_detr_config)
    groups = param_groups(model, stage, lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)
    grouped = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    backbone_ids = {id(p) for n, p in model.named_parameters() if n.startswith("detr.model.backbone.")}
    for group in groups:
        assert group["weight_decay"] == 1e-4
        in_backbone = {id(p) in backbone_ids for p in group["params"]}
        assert in_backbone == {group["lr"] == 1e-5}
    assert [g["lr"] for g in groups] == ([1e-4, 1e-5] if stage == "detection" else [1e-4])
    torch.optim.AdamW(groups)  # accepted as is


def test_zero_backbone_lr_freezes_the_backbone(make_tiny_detr_config):
    """backbone_lr 0: no backbone group and no backbone gradient (a random backbone kept as is)."""
    model = make_model(make_tiny_detr_config)
    groups = param_groups(model, "detection", lr=1e-4, backbone_lr=0.0, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["transformer"]
    backbone = {n: p for n, p in model.named_parameters() if n.startswith("detr.model.backbone.")}
    assert backbone and not any(p.requires_grad for p in backbone.values())
    assert model.detr.class_labels_classifier.weight.requires_grad
    # a later stage with a non-zero backbone_lr trains layer2-4 again
    param_groups(model, "detection", lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4)
    assert any(p.requires_grad for n, p in backbone.items() if ".layer4." in n)


def test_detection_stage_keeps_mask_head_bit_identical(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config)
    before = snapshot(model)
    train_steps(model, "detection")
    after = snapshot(model)
    for name in before:
        if (
            name.startswith(MASK_PREFIXES)
            or ".layer1." in name
            or name.endswith("backbone.model.conv1.weight")
        ):
            assert torch.equal(before[name], after[name]), name
    changed = [n for n in before if n.startswith("detr.") and not torch.equal(before[n], after[n])]
    assert "detr.class_labels_classifier.weight" in changed
    assert any(".layer4." in n for n in changed)
    assert any(".decoder." in n for n in changed)


def test_masks_stage_keeps_detr_bit_identical(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config)
    before = snapshot(model)
    train_steps(model, "masks")
    after = snapshot(model)
    for name in before:
        if name.startswith("detr."):
            assert torch.equal(before[name], after[name]), name
    for prefix in (
        "mask_head.conv1.",
        "mask_head.fpn_stages.2.",
        "mask_head.output_conv.",
        "bbox_attention.",
    ):
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)), prefix
    assert model.training and model.detr.training  # the frozen part's eval() was temporary


def test_masks_loss_equals_full_forward_and_only_reaches_mask_head(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config).eval()
    pixel_values, pixel_mask, labels = make_batch([3, 2], seed=1)
    freeze_for_stage(model, "masks")

    loss, components = compute_stage_loss(model, "masks", pixel_values, pixel_mask, labels)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    reference = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    reference.loss.backward()
    theirs = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    # The class/box terms of the full loss are constants here: the stage's loss is the weighted mask losses.
    config = model.config
    expected = (
        config.mask_loss_coefficient * reference.loss_dict["loss_mask"]
        + config.dice_loss_coefficient * reference.loss_dict["loss_dice"]
    )
    assert torch.allclose(loss, expected, atol=1e-5, rtol=1e-5)
    assert set(components) == {"loss_mask", "loss_dice"}
    for key, value in components.items():
        assert torch.allclose(value, reference.loss_dict[key], atol=1e-5, rtol=1e-5), key
        assert not value.requires_grad
    assert set(ours) == set(theirs)
    assert ours and all(n.startswith(MASK_PREFIXES) for n in ours)
    assert len(ours) == sum(1 for n, _ in model.named_parameters() if n.startswith(MASK_PREFIXES))
    for name, grad in ours.items():
        assert torch.allclose(grad, theirs[name], atol=1e-6, rtol=1e-4), name


def test_bool_masks_give_the_float_masks_loss_and_gradients(make_tiny_detr_config):
    """`PanopticCollator` ships bool masks (1 byte/pixel); the loss converts them on the device, exactly."""
    grads, losses = [], []
    for to_bool in (False, True):
        model = make_model(make_tiny_detr_config).eval()
        freeze_for_stage(model, "masks")
        pixel_values, pixel_mask, labels = make_batch([3, 2], seed=4)
        if to_bool:
            labels = [{**target, "masks": target["masks"].bool()} for target in labels]
        loss, _ = compute_stage_loss(model, "masks", pixel_values, pixel_mask, labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_masks_stage_matches_each_image_once_per_step(make_tiny_detr_config, monkeypatch):
    """One Hungarian matching per image and step (the final decoder layer's, for the mask loss): none for the
    detection loss of the frozen DETR, or for its auxiliary decoder layers."""
    model = make_model(make_tiny_detr_config)  # auxiliary_loss, 2 decoder layers
    assert model.config.auxiliary_loss and model.config.decoder_layers == 2
    matchings = []
    original = loss_for_object_detection.linear_sum_assignment  # one call per image of a batch

    def counted(cost):
        matchings.append(cost.shape)
        return original(cost)

    monkeypatch.setattr(loss_for_object_detection, "linear_sum_assignment", counted)
    steps, images = 3, 2
    train_steps(model, "masks", steps=steps)
    assert len(matchings) / (steps * images) <= 1.05, len(matchings)


def test_detection_loss_is_detr_box_loss_with_auxiliary_terms(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config).eval()
    pixel_values, pixel_mask, labels = make_batch([2, 1], seed=2)
    freeze_for_stage(model, "detection")
    loss, components = compute_stage_loss(model, "detection", pixel_values, pixel_mask, labels)
    reference = model.detr(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    assert torch.allclose(loss, reference.loss)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(components)
    assert "loss_mask" not in components
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(MASK_PREFIXES))


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.parametrize("num_objects", [[0, 0], [0, 2]], ids=["all-empty", "one-empty"])
def test_empty_targets_train(make_tiny_detr_config, stage, num_objects):
    model = make_model(make_tiny_detr_config)
    trainable = freeze_for_stage(model, stage)
    pixel_values, pixel_mask, labels = make_batch(num_objects, seed=3)
    loss, components = compute_stage_loss(model, stage, pixel_values, pixel_mask, labels)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in components.values())
    loss.backward()
    # every trainable parameter is in the graph (a DDP run would otherwise stall), gradients finite
    if stage == "masks":
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
        if sum(num_objects) == 0:
            assert components["loss_mask"] == 0 and components["loss_dice"] == 0
            assert all(torch.count_nonzero(p.grad) == 0 for p in trainable)


def test_unknown_stage_is_rejected(make_tiny_detr_config):
    model = make_model(make_tiny_detr_config)
    with pytest.raises(ValueError, match="unknown stage"):
        freeze_for_stage(model, "boxes")
    with pytest.raises(ValueError, match="unknown stage"):
        compute_stage_loss(model, "all", *make_batch([1]))


def test_ddp_wrapped_model_goes_through_the_wrapper(make_tiny_detr_config, tmp_path):
    """With a DistributedDataParallel wrapper the loss is computed through DDP's forward (gradient sync)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    model = make_model(make_tiny_detr_config).eval()
    freeze_for_stage(model, "masks")
    pixel_values, pixel_mask, labels = make_batch([2, 1], seed=4)
    expected, _ = compute_stage_loss(model, "masks", pixel_values, pixel_mask, labels)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        calls, buckets = [], []
        wrapped.register_forward_pre_hook(lambda module, args: calls.append(len(args)))

        def count_allreduce(state, bucket):  # DDP's gradient all-reduce, called once per gradient bucket
            buckets.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        wrapped.register_comm_hook(None, count_allreduce)
        loss, _ = compute_stage_loss(wrapped, "masks", pixel_values, pixel_mask, labels)
        loss.backward()
    finally:
        dist.destroy_process_group()
    assert calls == [3]
    assert buckets  # the gradients went through DDP's reducer (they would not if the wrapper were bypassed)
    assert "forward" not in model.__dict__  # the temporary routing is undone
    assert torch.allclose(loss, expected)
    for name, grad in expected_grads.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-6), name
