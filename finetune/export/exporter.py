"""Write and validate an ONNX export of a panoptic DETR checkpoint (``detr-panoptic-export``).

The export folder (built in a temporary sibling, renamed into place only once validated)::

    OUT/body.onnx               backbone + transformer + class/box heads + attention maps (dynamic B, H, W)
    OUT/mask_head.onnx          the mask head on N selected (image, query) pairs (dynamic N)
    OUT/config.json             the checkpoint's config: labels, stuff labels, thresholds, category ids, colours
    OUT/preprocessor_config.json  the image processor (resize, normalisation)
    OUT/export.json             manifest: format, opset, quantization, graph inputs/outputs, validation figures
    OUT/README.md               how to run it, with and without this package

Validation before the rename: ``onnx.checker`` (full check, with shape inference) on both graphs, then the
export on ONNX Runtime against the PyTorch model on a real photo: logits, boxes and the masks of the
selected queries (at least the 5 best-scoring ones, so the mask head is compared even when no query passes
the threshold) within tolerance, and the final predictions (segments, id map, scores). With ``int8``, the
fp32 graphs are validated first, then quantized (static, calibrated on photos: `finetune.export.quantize`),
and the int8 predictions are compared with the fp32 ones (figures in ``export.json``; int8 is an
approximation, so they are reported, not enforced).
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from finetune.export.compare import compare_predictions
from finetune.export.graphs import export_graphs
from finetune.export.layout import (
    BODY_FILE,
    BODY_INPUTS,
    BODY_OUTPUTS,
    DEFAULT_OPSET,
    EXPORT_FORMAT,
    MANIFEST_FILE,
    MASK_HEAD_FILE,
    MASK_HEAD_INPUTS,
    MASK_HEAD_OUTPUTS,
    SUPPORTED_OPSETS,
)

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")
MISSING_ONNX = "onnx is not installed: pip install -e '.[export]' from the repository root (or pip install onnx onnxruntime)"
# fp32 ONNX Runtime vs PyTorch: |difference| <= ATOL + RTOL * max|PyTorch value|, per output. The kernels
# differ (oneDNN vs MLAS), so the last bits do; measured on the tiny checkpoint and the R50 architecture,
# the differences stay 10-100x inside these bounds (docs/deploying.md).
ATOL, RTOL = 1e-4, 1e-3
# The PyTorch-vs-fp32 predictions must agree on at least this fraction of pixels (an id map pixel moves only
# where two masks tie within rounding).
MIN_PIXEL_AGREEMENT = 0.999
MIN_COMPARED_PAIRS = 5
REPO_SAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "sample_data/cvat_task_machines/images/machines_000.jpg"


class ExportError(ValueError):
    """The export cannot be made or failed its validation (one-line message; nothing was written)."""


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError(MISSING_ONNX) from err
    return onnx


def check_opset(opset: int) -> None:
    """Raises `ExportError` for an opset outside `SUPPORTED_OPSETS`."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"unsupported --opset {opset}: this exporter writes opsets {SUPPORTED_OPSETS.start}-"
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )


def _load_photos(paths: list[Path], option: str) -> list[Any]:
    from dataset_scripts.cvat.records import ConversionError
    from dataset_scripts.image_io import load_upright_rgb

    images = []
    for path in paths:
        try:
            images.append(load_upright_rgb(path)[0])
        except (ConversionError, OSError) as err:
            raise ExportError(f"{option} {path}: {err}") from err
    return images


def validation_images(paths: list[Path] | None) -> list[Any]:
    """The photos the export is validated on: the given ones, else the repository's sample photo.

    Raises:
        ExportError: an unreadable file, or no photo given and none in the repository.
    """
    if not paths:
        if not REPO_SAMPLE_IMAGE.is_file():
            raise ExportError("no validation photo: pass --image PHOTO (any RGB photo of the model's domain)")
        paths = [REPO_SAMPLE_IMAGE]
    return _load_photos(paths, "--image")


def calibration_images(folder: str | Path | None) -> list[Any]:
    """The int8 calibration photos (`finetune.export.quantize.calibration_paths`), loaded.

    Raises:
        ExportError: no folder and no repository photos, an empty or missing folder, an unreadable photo.
    """
    from finetune.export.quantize import CalibrationError, calibration_paths

    try:
        paths = calibration_paths(folder)
    except CalibrationError as err:
        raise ExportError(str(err)) from err
    return _load_photos(paths, "--calibration-images")


def _max_diff(reference: torch.Tensor, other: torch.Tensor, name: str) -> dict[str, float]:
    """The largest difference and its bound; raises `ExportError` beyond the bound."""
    if reference.shape != other.shape:
        raise ExportError(f"validation failed: {name} has shape {tuple(other.shape)}, PyTorch {tuple(reference.shape)}")
    diff = float((reference.float() - other.float()).abs().max()) if reference.numel() else 0.0
    bound = ATOL + RTOL * (float(reference.abs().max()) if reference.numel() else 0.0)
    if not diff <= bound:  # also catches NaN
        raise ExportError(f"validation failed: {name} differs from PyTorch by {diff:.3g} (bound {bound:.3g})")
    return {"max_abs_diff": diff, "bound": bound}


def _compared_pairs(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected (image, query) pairs, plus each image's best-scoring queries up to `MIN_COMPARED_PAIRS`."""
    from finetune.inference.core import selected_queries

    keep = selected_queries(logits, threshold)
    scores = logits.softmax(-1)[..., :-1].max(-1).values
    best = scores.topk(min(MIN_COMPARED_PAIRS, scores.shape[1]), dim=1).indices
    keep[torch.arange(keep.shape[0])[:, None], best] = True
    return keep.nonzero(as_tuple=True)


def validate_against_pytorch(model: Any, processor: Any, exported: Any, images: list[Any], post: Any) -> dict[str, Any]:
    """Compare the export on ONNX Runtime with the PyTorch model on `images` (one padded batch).

    Returns:
        Per output, the largest difference and its bound; the prediction agreement (`compare_predictions`).

    Raises:
        ExportError: a difference beyond its bound, or predictions that disagree.
    """
    from finetune.inference.core import TorchSplitForward, predict_batch

    inputs = processor(images=images, return_tensors="pt")
    pixel_values, pixel_mask = inputs["pixel_values"], inputs["pixel_mask"]
    torch_split = TorchSplitForward(model)
    with torch.inference_mode():
        reference = torch_split.detect(pixel_values, pixel_mask)
        image_index, query_index = _compared_pairs(reference.logits, post.threshold)
        reference_masks = torch_split.masks(reference, image_index, query_index)
    candidate = exported.detect(pixel_values, pixel_mask)
    candidate_masks = exported.masks(candidate, image_index, query_index)
    figures: dict[str, Any] = {
        "images": [list(image.size[::-1]) for image in images],
        "input_size": list(pixel_values.shape[-2:]),
        "logits": _max_diff(reference.logits, candidate.logits, "logits"),
        "pred_boxes": _max_diff(reference.pred_boxes, candidate.pred_boxes, "pred_boxes"),
        "masks": _max_diff(reference_masks, candidate_masks, "masks"),
        "mask_pairs_compared": int(image_index.numel()),
    }
    sizes = [(image.height, image.width) for image in images]
    torch_out = predict_batch(model, processor, pixel_values, pixel_mask, sizes, post)
    onnx_out = predict_batch(exported, processor, pixel_values, pixel_mask, sizes, post)
    agreement = compare_predictions(
        torch_out.predictions, onnx_out.predictions, len(model.config.id2label), post.label_ids_to_fuse
    )
    figures["predictions"] = agreement
    if agreement["same_segments"] != len(images) or agreement["pixel_agreement"] < MIN_PIXEL_AGREEMENT:
        raise ExportError(f"validation failed: the ONNX predictions differ from PyTorch's ({agreement})")
    return figures


def _readme(model_dir: str, manifest: dict[str, Any]) -> str:
    validation = manifest["validation"]
    lines = [
        f"# ONNX export of `{Path(model_dir).name}` (detr-panoptic)",
        "",
        f"Written by `detr-panoptic-export --model {model_dir}` (opset {manifest['opset']}, "
        f"weights: {'int8 static quantization' if manifest['quantize'] == 'int8' else 'fp32'}).",
        "",
        "## Use it",
        "",
        "With detr-panoptic (`pip install -e '.[export]'`): the same API, preprocessing and post-processing as",
        "the PyTorch checkpoint, on ONNX Runtime (CPU, or CUDA with onnxruntime-gpu):",
        "",
        "```python",
        "from PIL import Image",
        "from finetune.inference import PanopticPredictor",
        "",
        "predictor = PanopticPredictor.from_pretrained(\"PATH/TO/THIS/FOLDER\")",
        "[prediction] = predictor.predict([Image.open(\"site.jpg\").convert(\"RGB\")])  # .ids (H, W), .segments",
        "```",
        "",
        "`detr-panoptic-predict IMAGES --model PATH/TO/THIS/FOLDER --output-dir OUT` and",
        "`python demo.py --model PATH/TO/THIS/FOLDER` accept it too.",
        "",
        "## The graphs",
        "",
        f"1. `{BODY_FILE}`: inputs `pixel_values` (B, 3, H, W) float32 (the image processor's output: resized,",
        "   normalised, padded bottom/right) and `pixel_mask` (B, H, W) int64 (1 on the image, 0 on padding).",
        "   Outputs `logits` (B, Q, classes + 1; the last class is \"no object\"), `pred_boxes` (B, Q, 4;",
        "   normalised cx, cy, w, h) and the maps the mask head reads (`attention_maps`, `projected`, `res4`,",
        "   `res3`, `res2`).",
        "2. Keep the queries whose most probable class is not \"no object\" and whose probability exceeds",
        "   `threshold` (config.json `panoptic_postprocess`).",
        f"3. `{MASK_HEAD_FILE}`: the body's maps plus `image_index` and `query_index` (N,) int64 of the kept",
        "   (image, query) pairs (N >= 1) give `masks` (N, H/4, W/4) float32 mask logits.",
        "4. Post-process as transformers' `DetrImageProcessor.post_process_panoptic_segmentation` (cut the",
        "   padding off each image's masks first); stuff labels (`stuff_label_ids`) are fused into one segment.",
        "",
        "Labels (`id2label`), stuff labels, dataset category ids, colours and thresholds are in `config.json`;",
        "`export.json` also lists the labels for readers without transformers.",
        "",
        "## Validation",
        "",
        f"Checked with `onnx.checker` and compared with the PyTorch model on {len(validation['images'])} photo(s)"
        f" at input size {validation['input_size'][0]}x{validation['input_size'][1]}: largest differences",
        f"logits {validation['logits']['max_abs_diff']:.2g}, boxes {validation['pred_boxes']['max_abs_diff']:.2g},"
        f" masks {validation['masks']['max_abs_diff']:.2g} (fp32 graphs); predictions: "
        f"{validation['predictions']['same_segments']}/{validation['predictions']['images']} images with the same"
        f" segments, pixel agreement {validation['predictions']['pixel_agreement']:.4f}.",
    ]
    if manifest["quantize"] == "int8":
        int8 = manifest["int8_vs_fp32"]
        pq = "n/a" if int8["pq"] is None else f"{int8['pq']:.3f}"
        lines += [
            "",
            f"int8 against the fp32 export on the same photo(s): PQ {pq}, "
            f"{int8['same_segments']}/{int8['images']} images with the same segments, pixel agreement "
            f"{int8['pixel_agreement']:.4f}.",
        ]
    return "\n".join(lines) + "\n"


def _label_table(config: Any) -> list[dict[str, Any]]:
    from finetune.inference.metadata import category_ids, label_color, saved_label_colors, stuff_label_ids

    stuff = stuff_label_ids(config)
    categories = category_ids(config) or {}
    colors = saved_label_colors(config)
    return [
        {
            "label_id": int(label),
            "name": name,
            "isthing": int(label) not in stuff,
            "category_id": categories.get(int(label)),
            "color": list(label_color(int(label), colors)),
        }
        for label, name in sorted(config.id2label.items(), key=lambda item: int(item[0]))
    ]


def export_model(
    model_dir: str,
    output_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str = "none",
    images: list[Path] | None = None,
    overwrite: bool = False,
    calibration_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Export, validate and write an export folder (see the module docstring).

    Args:
        model_dir: A checkpoint folder or Hub id (`finetune.modeling.loading.load_checkpoint`).
        output_dir: The export folder to create.
        opset: ONNX opset (`SUPPORTED_OPSETS`).
        quantize: ``"none"`` (fp32) or ``"int8"`` (static quantization, `finetune.export.quantize`).
        images: Validation photos; default: the repository's sample photo.
        overwrite: Replace an existing `output_dir`.
        calibration_dir: int8 only: a folder of calibration photos of the model's domain (up to
            `finetune.export.quantize.MAX_CALIBRATION_IMAGES`, sorted); default: the repository's sample photos.

    Returns:
        The manifest written to ``export.json``.

    Raises:
        ExportError: a bad option, a model that cannot be loaded, an output folder that exists or cannot be
            written, or a failed validation; nothing is left in `output_dir`.
        ImportError: onnx or onnxruntime is missing (one-line message).
    """
    from dataset_scripts.atomic_io import atomic_directory
    from finetune.export.quantize import quantize_static_int8
    from finetune.export.runtime import OnnxPanopticModel, import_onnxruntime
    from finetune.inference.core import PostProcessing, predict_batch
    from finetune.inference.metadata import postprocess_settings, stuff_label_ids
    from finetune.modeling.loading import ModelUnavailableError, load_checkpoint

    check_opset(opset)
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown --quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    onnx = _import_onnx()
    ort = import_onnxruntime()
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise ExportError(f"{output_dir} already exists; pass --overwrite to replace it")
    photos = validation_images(images)
    # Checked before the slow export so that a missing folder fails at once.
    calibration = calibration_images(calibration_dir) if quantize == "int8" else []
    try:
        model, processor, missing = load_checkpoint(model_dir, with_processor=True)
    except (ModelUnavailableError, OSError) as err:
        raise ExportError(f"cannot load the model: {err}") from err
    if missing:
        logger.warning("%s lacks %d tensors (random init), e.g. %s", model_dir, len(missing), missing[:3])
    config = model.config
    settings = postprocess_settings(config)
    # The thresholds travel with the export even when the checkpoint relied on the defaults.
    config.panoptic_postprocess = settings
    post = PostProcessing(**settings, label_ids_to_fuse=frozenset(stuff_label_ids(config)))
    try:
        with atomic_directory(output_dir, overwrite=overwrite) as tmp:
            export_graphs(model, tmp, opset)
            for name in (BODY_FILE, MASK_HEAD_FILE):
                onnx.checker.check_model(str(tmp / name), full_check=True)
            config.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            manifest: dict[str, Any] = {
                "format": EXPORT_FORMAT,
                "version": 1,
                "opset": opset,
                "quantize": "none",
                "files": {"body": BODY_FILE, "mask_head": MASK_HEAD_FILE},
                "body": {"inputs": list(BODY_INPUTS), "outputs": list(BODY_OUTPUTS)},
                "mask_head": {"inputs": list(MASK_HEAD_INPUTS), "outputs": list(MASK_HEAD_OUTPUTS)},
                "postprocess": settings,
                "labels": _label_table(config),
                "source": str(model_dir),
                "versions": {
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                    "onnxruntime": ort.__version__,
                    "python": platform.python_version(),
                },
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            fp32 = OnnxPanopticModel(tmp, device="cpu")
            manifest["validation"] = validate_against_pytorch(model, processor, fp32, photos, post)
            logger.info(
                "validated against PyTorch: logits %.2g, boxes %.2g, masks %.2g (largest differences), "
                "same segments on %d/%d photo(s)",
                manifest["validation"]["logits"]["max_abs_diff"],
                manifest["validation"]["pred_boxes"]["max_abs_diff"],
                manifest["validation"]["masks"]["max_abs_diff"],
                manifest["validation"]["predictions"]["same_segments"],
                len(photos),
            )
            if quantize == "int8":
                inputs = processor(images=photos, return_tensors="pt")
                sizes = [(image.height, image.width) for image in photos]
                fp32_predictions = predict_batch(
                    fp32, processor, inputs["pixel_values"], inputs["pixel_mask"], sizes, post
                ).predictions
                manifest["quantized_ops"] = quantize_static_int8(tmp, fp32, processor, calibration, post.threshold)
                manifest["calibration_images"] = len(calibration)
                del fp32
                for name in (BODY_FILE, MASK_HEAD_FILE):
                    onnx.checker.check_model(str(tmp / name), full_check=True)
                int8 = OnnxPanopticModel(tmp, device="cpu")
                int8_predictions = predict_batch(
                    int8, processor, inputs["pixel_values"], inputs["pixel_mask"], sizes, post
                ).predictions
                manifest["quantize"] = "int8"
                manifest["int8_vs_fp32"] = compare_predictions(
                    fp32_predictions, int8_predictions, len(config.id2label), post.label_ids_to_fuse
                )
                logger.info("int8 against fp32 on the validation photo(s): %s", manifest["int8_vs_fp32"])
            manifest["size_bytes"] = {name: (tmp / name).stat().st_size for name in (BODY_FILE, MASK_HEAD_FILE)}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            (tmp / "README.md").write_text(_readme(str(model_dir), manifest), encoding="utf-8")
    except OSError as err:
        raise ExportError(f"cannot write {output_dir}: {err.strerror or err}") from err
    return manifest


__all__ = ["ExportError", "check_opset", "export_model", "validate_against_pytorch", "validation_images"]
