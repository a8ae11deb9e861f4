"""The tensor shapes and data flow that the README's "How DETR's panoptic head works" states, on the tiny model.

Hooks on the real modules of `DetrForSegmentation` record one forward pass of a B x 3 x H x W batch; each
assertion below is one line of the README's shape table (d = d_model, M = attention heads, N = queries).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DetrForSegmentation, DetrImageProcessor

B, H, W = 2, 128, 96
NUM_LABELS = 5


@pytest.fixture(scope="module")
def recorded():
    from tests.conftest import tiny_detr_config

    torch.manual_seed(0)
    model = DetrForSegmentation(tiny_detr_config(num_labels=NUM_LABELS)).eval()
    seen: dict[str, object] = {}

    def keep_output(name):
        return lambda _module, _args, output: seen.__setitem__(name, output)

    def keep_inputs(name):
        return lambda _module, args, kwargs: seen.__setitem__(name, (args, kwargs))

    mask_head = model.mask_head
    handles = [
        model.detr.model.backbone.register_forward_hook(keep_output("backbone")),
        model.detr.model.input_projection.register_forward_hook(keep_output("input_projection")),
        model.detr.model.encoder.register_forward_hook(keep_output("encoder")),
        model.detr.model.decoder.register_forward_hook(keep_output("decoder")),
        model.bbox_attention.register_forward_pre_hook(keep_inputs("bbox_attention_in"), with_kwargs=True),
        model.bbox_attention.register_forward_hook(keep_output("bbox_attention")),
        mask_head.register_forward_pre_hook(keep_inputs("mask_head_in"), with_kwargs=True),
        mask_head.conv1.register_forward_pre_hook(keep_inputs("conv1_in"), with_kwargs=True),
        mask_head.conv2.register_forward_hook(keep_output("conv2")),
        *[
            stage.register_forward_hook(keep_output(f"fpn_stage{i}"))
            for i, stage in enumerate(mask_head.fpn_stages)
        ],
        mask_head.output_conv.register_forward_hook(keep_output("output_conv")),
    ]
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(B, 3, H, W))
    for handle in handles:
        handle.remove()
    config = model.config
    dims = SimpleNamespace(d=config.d_model, M=config.encoder_attention_heads, N=config.num_queries)
    return SimpleNamespace(model=model, seen=seen, outputs=outputs, **vars(dims))


def test_backbone_feature_maps_res2_to_res5(recorded):
    # DetrConvEncoder returns [(feature_map, pixel_mask)] for Res2..Res5 (timm layer1..layer4), strides 4..32
    features = recorded.seen["backbone"]
    channels = recorded.model.detr.model.backbone.intermediate_channel_sizes
    assert channels == [64, 128, 256, 512]  # resnet18; resnet50: 256, 512, 1024, 2048
    assert [tuple(f.shape) for f, _ in features] == [
        (B, c, H // s, W // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)
    ]
    assert [tuple(m.shape) for _, m in features] == [(B, H // s, W // s) for s in (4, 8, 16, 32)]


def test_encoder_memory_and_object_embeddings(recorded):
    s, d, N = recorded.seen, recorded.d, recorded.N
    assert s["input_projection"].shape == (B, d, H // 32, W // 32)  # 1x1 conv of Res5: 512 -> d
    assert s["encoder"].last_hidden_state.shape == (B, (H // 32) * (W // 32), d)  # memory, one token per cell
    assert s["decoder"].last_hidden_state.shape == (B, N, d)  # object embeddings
    assert recorded.outputs.logits.shape == (B, N, NUM_LABELS + 1)
    assert recorded.outputs.pred_boxes.shape == (B, N, 4)


def test_bbox_attention_maps_over_the_encoder_memory(recorded):
    s, d, M, N = recorded.seen, recorded.d, recorded.M, recorded.N
    (queries, memory), kwargs = s["bbox_attention_in"]
    assert torch.equal(queries, s["decoder"].last_hidden_state)
    # the keys are the encoder memory folded back to a d x H/32 x W/32 image
    assert memory.shape == (B, d, H // 32, W // 32)
    assert torch.equal(memory.flatten(2).transpose(1, 2), s["encoder"].last_hidden_state)
    maps = s["bbox_attention"]
    assert maps.shape == (B, N, M, H // 32, W // 32)
    # one softmax per query over all M x H/32 x W/32 (heads and positions jointly, as in the original DETR);
    # no multiplication by values: the maps themselves are the output
    assert torch.allclose(maps.sum(dim=(-3, -2, -1)), torch.ones(B, N), atol=1e-5)
    assert not torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(B, N, M), atol=1e-3)


def test_mask_head_concatenates_projected_res5_and_upsamples_with_res4_res3_res2(recorded):
    s, d, M, N = recorded.seen, recorded.d, recorded.M, recorded.N
    _, kwargs = s["mask_head_in"]
    # the "Res5" of the figure is the projected backbone map (input_projection), not the encoder memory
    assert torch.equal(kwargs["features"], s["input_projection"])
    assert torch.equal(kwargs["attention_masks"], s["bbox_attention"])
    backbone = [f for f, _ in s["backbone"]]
    assert [
        f is b for f, b in zip(kwargs["fpn_features"], (backbone[2], backbone[1], backbone[0]), strict=True)
    ] == [True] * 3

    (concatenated,), _ = s["conv1_in"]  # per (image, query): d feature channels + M attention maps
    assert concatenated.shape == (B * N, d + M, H // 32, W // 32)
    assert s["conv2"].shape == (B * N, d // 2, H // 32, W // 32)
    assert s["fpn_stage0"].shape == (B * N, d // 4, H // 16, W // 16)  # + Res4
    assert s["fpn_stage1"].shape == (B * N, d // 8, H // 8, W // 8)  # + Res3
    assert s["fpn_stage2"].shape == (B * N, d // 16, H // 4, W // 4)  # + Res2
    assert s["output_conv"].shape == (B * N, 1, H // 4, W // 4)
    assert recorded.outputs.pred_masks.shape == (B, N, H // 4, W // 4)
    assert torch.equal(recorded.outputs.pred_masks.flatten(0, 1), s["output_conv"][:, 0])


def test_post_processing_argmax_and_stuff_fusion():
    """Queries kept by score, masks upsampled, per-pixel argmax of score x mask, stuff queries fused."""
    processor = DetrImageProcessor(format="coco_panoptic")
    num_queries, h, w = 4, 8, 8
    logits = torch.full((1, num_queries, NUM_LABELS + 1), -10.0)
    # query 0: thing label 0 (left); queries 1, 2: stuff label 3 (right half, split top/bottom); 3: no object
    for query, label in enumerate([0, 3, 3, NUM_LABELS]):
        logits[0, query, label] = 10.0
    masks = torch.full((1, num_queries, h, w), -10.0)
    masks[0, 0, :, :4] = 10.0
    masks[0, 1, :4, 4:] = 10.0
    masks[0, 2, 4:, 4:] = 10.0
    outputs = SimpleNamespace(logits=logits, pred_masks=masks)

    fused = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse={3}, target_sizes=[(32, 32)]
    )[0]
    assert fused["segmentation"].shape == (32, 32)  # masks upsampled from H/4 x W/4 to the requested size
    # both stuff queries write segment 2 (segments_info lists it once per query: consumers deduplicate by id)
    info = [(s["id"], s["label_id"], s["was_fused"]) for s in fused["segments_info"]]
    assert info == [(1, 0, False), (2, 3, True), (2, 3, True)]
    assert sorted(fused["segmentation"].unique().tolist()) == [1, 2]

    unfused = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=set(), target_sizes=[(32, 32)]
    )
    assert sorted(unfused[0]["segmentation"].unique().tolist()) == [1, 2, 3]  # two "wall" instances
