"""int8 static quantization of an export's two graphs (``--quantize int8``), calibrated on real photos.

Why static, in QDQ format: ONNX Runtime's dynamic quantization turns a convolution into ``ConvInteger``,
which has no fast kernel on CPUs without VNNI and made the R50 body 2.6x *slower* than fp32 (measured,
docs/deploying.md). Static quantization fixes each activation's scale from calibration photos and writes
QuantizeLinear/DequantizeLinear pairs around Conv and MatMul; ONNX Runtime fuses them into ``QLinearConv``
and quantized matrix products, which its MLAS kernels run fast with AVX2 alone.

Steps, per graph:

1. `quant_pre_process` (ONNX shape inference and ONNX Runtime's basic graph optimisations): folds DETR's
   frozen batch norms (a Mul and an Add after each convolution) into the convolutions, so that one
   quantized convolution replaces Conv+Mul+Add instead of the Mul/Add running in fp32 between
   dequantize and quantize.
2. `quantize_static` with a `CalibrationDataReader`: the body on each calibration photo as the image
   processor prepares it; the mask head on the fp32 body's outputs for those photos, with the selected
   queries plus each photo's best ones (`_calibration_pairs`), so its scales cover the masks it will draw.

Weights int8 per output channel, symmetric; activations uint8 with MinMax ranges. ``reduce_range`` (7-bit
weights) is on: without VNNI, MLAS's u8s8 kernels add pairs of products in int16, which can saturate with
8-bit weights.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.export.layout import BODY_FILE, FEATURE_OUTPUTS, MASK_HEAD_FILE

logger = logging.getLogger(__name__)

BODY_OPS = ("Conv", "MatMul")
MASK_HEAD_OPS = ("Conv",)
# Convolutions kept in fp32, by the prefix of their weight's name. The mask head's first convolution reads
# the concatenation of the projected features (values ~1-10) and the attention maps (probabilities, mostly
# < 0.01): one activation scale for both rounds the attention maps to zero. Quantized, it dropped PQ
# against fp32 to 0.68 on the quickstart validation photos (0.99 with it in fp32; docs/deploying.md).
FP32_WEIGHT_PREFIXES = ("mask_head.conv1.",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Calibration runs every activation of the graph through ONNX Runtime per photo; beyond a few dozen photos
# the ranges barely move and the export only gets slower.
MAX_CALIBRATION_IMAGES = 32
BEST_PAIRS_PER_IMAGE = 5
REPO_CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "sample_data/cvat_task_machines/images"


class CalibrationError(ValueError):
    """No usable calibration photos (one-line message)."""


def calibration_paths(folder: str | Path | None) -> list[Path]:
    """The calibration photos: up to `MAX_CALIBRATION_IMAGES` from `folder` (sorted), else from the repository.

    Raises:
        CalibrationError: the folder does not exist or holds no photo, or none was given and the repository's
            sample photos are not there (an installed package).
    """
    if folder is None:
        if not REPO_CALIBRATION_DIR.is_dir():
            raise CalibrationError(
                "--quantize int8 needs calibration photos: pass --calibration-images DIR (photos of the model's domain)"
            )
        folder = REPO_CALIBRATION_DIR
        logger.warning("calibrating int8 on the repository's sample photos (%s); pass --calibration-images DIR "
                       "with photos of your domain for better int8 accuracy", folder)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CalibrationError(f"--calibration-images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"--calibration-images {folder}: no photo ({', '.join(IMAGE_SUFFIXES)}) in it")
    return paths[:MAX_CALIBRATION_IMAGES]


class _Feeds:
    """A `CalibrationDataReader` over a list of feed dicts (ONNX Runtime pulls them one by one)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _calibration_pairs(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs the mask head sees in use (selected queries) plus each image's best-scoring queries."""
    from finetune.inference.core import selected_queries

    keep = selected_queries(logits, threshold)
    scores = logits.softmax(-1)[..., :-1].max(-1).values
    best = scores.topk(min(BEST_PAIRS_PER_IMAGE, scores.shape[1]), dim=1).indices
    keep[torch.arange(keep.shape[0])[:, None], best] = True
    return keep.nonzero(as_tuple=True)


def _fp32_nodes(graph: Path, op_types: tuple[str, ...]) -> list[str]:
    """The names of the nodes of `op_types` in `graph` whose weight matches `FP32_WEIGHT_PREFIXES`."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1].startswith(FP32_WEIGHT_PREFIXES)
    ]


def _quantize(source: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...], work: Path) -> list[str]:
    """Quantize `source` in place; returns the nodes of `op_types` kept in fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / f"{source.stem}.pre.onnx"
    # The symbolic shape inference of onnxruntime's tools fails on the body's dynamic spatial sizes; ONNX's own
    # shape inference is enough for the quantizer.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    excluded = _fp32_nodes(prepared, op_types)
    target = work / f"{source.stem}.int8.onnx"
    quantize_static(
        str(prepared),
        str(target),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        nodes_to_exclude=excluded,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # MinMax adds ReduceMin/ReduceMax after each tensor, so a photo's collected data is two numbers per
        # tensor, not the activations (no memory bound needed; onnxruntime 1.32's CalibMaxIntermediateOutputs
        # would drop the collected ranges instead of folding them in).
        calibrate_method=CalibrationMethod.MinMax,
    )
    target.replace(source)
    return excluded


def quantize_static_int8(folder: Path, fp32: Any, processor: Any, photos: list[Any], threshold: float) -> list[str]:
    """Replace ``body.onnx`` and ``mask_head.onnx`` in `folder` by their static int8 quantization.

    Args:
        folder: The export folder being written (fp32 graphs, validated).
        fp32: `finetune.export.runtime.OnnxPanopticModel` on those fp32 graphs (gives the mask head's inputs).
        processor: The checkpoint's image processor.
        photos: Calibration photos (PIL RGB), each prepared by `processor` on its own.
        threshold: The class threshold of the query selection.

    Returns:
        The quantized operator types.
    """
    body_feeds, mask_feeds = [], []
    for photo in photos:
        inputs = processor(images=[photo], return_tensors="pt")
        body_feeds.append({
            "pixel_values": inputs["pixel_values"].numpy(),
            "pixel_mask": inputs["pixel_mask"].to(torch.int64).numpy(),
        })
        detection = fp32.detect(inputs["pixel_values"], inputs["pixel_mask"])
        image_index, query_index = _calibration_pairs(detection.logits, threshold)
        mask_feeds.append({
            **{name: detection.state[name] for name in FEATURE_OUTPUTS},
            "image_index": image_index.numpy(),
            "query_index": query_index.numpy(),
        })
    with tempfile.TemporaryDirectory(dir=folder, prefix=".quantize-") as work:
        _quantize(folder / BODY_FILE, body_feeds, BODY_OPS, Path(work))
        excluded = _quantize(folder / MASK_HEAD_FILE, mask_feeds, MASK_HEAD_OPS, Path(work))
    if not excluded:
        # The mask head's module was renamed: quantizing its first convolution would cost most of the accuracy.
        raise RuntimeError(f"no mask-head convolution matches {FP32_WEIGHT_PREFIXES}: update FP32_WEIGHT_PREFIXES")
    logger.info("int8 static quantization of %s, calibrated on %d photo(s)", ", ".join(BODY_OPS), len(photos))
    return sorted(set(BODY_OPS) | set(MASK_HEAD_OPS))
