"""An ONNX export (`finetune.export`) on ONNX Runtime, as a backend of the inference core.

`OnnxPanopticModel` implements `finetune.inference.core.SplitForward` (``detect`` then ``masks`` on the
selected pairs) over ``body.onnx`` and ``mask_head.onnx``, and carries the checkpoint's ``config`` (labels,
stuff labels, thresholds), so that `PanopticPredictor` and everything built on it (predict, evaluate, the
demo) run an export exactly as a PyTorch checkpoint: same preprocessing (the saved image processor), same
query selection and the same post-processing code (`finetune.inference.core.postprocess_image`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.export.layout import (
    BODY_FILE,
    BODY_OUTPUTS,
    EXPORT_FORMAT,
    FEATURE_OUTPUTS,
    MANIFEST_FILE,
    MASK_HEAD_FILE,
    MASK_HEAD_OUTPUTS,
)
from finetune.inference.core import Detection

logger = logging.getLogger(__name__)

MISSING_RUNTIME = (
    "onnxruntime is not installed: pip install -e '.[export]' from the repository root "
    "(or pip install onnxruntime)"
)


class ExportFolderError(ValueError):
    """A folder that is not a complete ONNX export (the message names the missing or broken file)."""


def import_onnxruntime() -> Any:
    """``onnxruntime``, or an `ImportError` whose message is one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(MISSING_RUNTIME) from err
    return onnxruntime


def is_onnx_export(path: str | Path) -> bool:
    """Whether `path` is a folder written by ``detr-panoptic-export`` (it holds ``export.json``)."""
    return (Path(path).expanduser() / MANIFEST_FILE).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export's ``export.json``, checked to be ours and to name files that exist.

    Raises:
        ExportFolderError: unreadable, another format, or a graph file missing.
    """
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportFolderError(f"{path}: unreadable export manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportFolderError(f"{path}: not a {EXPORT_FORMAT} manifest")
    for name in (BODY_FILE, MASK_HEAD_FILE, "config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise ExportFolderError(f"{folder} is not a complete ONNX export: {name} is missing")
    return manifest


def execution_providers(device: str | torch.device | None, available: list[str]) -> list[str]:
    """ONNX Runtime providers for a device: CUDA when asked or (default) when available, else the CPU.

    Raises:
        ValueError: CUDA asked for but this onnxruntime build has no CUDA provider, or an unknown device.
    """
    kind = torch.device(device).type if device is not None else None
    if kind not in (None, "cpu", "cuda"):
        raise ValueError(f"an ONNX export runs on cpu or cuda, not {device}")
    if kind == "cuda" and "CUDAExecutionProvider" not in available:
        raise ValueError(
            "device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu instead of onnxruntime)"
        )
    if kind in (None, "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPanopticModel:
    """The two graphs of an export on ONNX Runtime, with the checkpoint's config.

    Args:
        folder: An export folder (``detr-panoptic-export --output-dir``).
        device: ``"cpu"`` or ``"cuda"``; default: CUDA when this onnxruntime has its provider.
        threads: ONNX Runtime's intra-op threads; default: ``torch.get_num_threads()``, so that a program
            that limits PyTorch's threads limits the export's too.

    Attributes:
        config: The checkpoint's `DetrConfig` (``id2label``, ``stuff_label_ids``, ``panoptic_postprocess``...).
        device: Where the inference core puts the inputs (the CPU: ONNX Runtime copies them to its device).
        providers: The execution providers the sessions use.
        manifest: ``export.json``.

    Raises:
        ExportFolderError: the folder is not a complete export.
        ImportError: onnxruntime is missing (one-line message).
    """

    def __init__(self, folder: str | Path, device: str | torch.device | None = None, threads: int | None = None):
        from transformers import DetrConfig

        ort = import_onnxruntime()
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder)
        self.config = DetrConfig.from_pretrained(str(self.folder))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        providers = execution_providers(device, ort.get_available_providers())
        try:
            self.body = ort.InferenceSession(str(self.folder / BODY_FILE), options, providers=providers)
            self.mask_head = ort.InferenceSession(str(self.folder / MASK_HEAD_FILE), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for a damaged graph
            raise ExportFolderError(f"{self.folder}: ONNX Runtime cannot load the graphs ({err})") from err
        self.providers = self.body.get_providers()
        self.device = torch.device("cpu")
        logger.info("ONNX export %s on %s", self.folder, ", ".join(self.providers))

    def detect(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> Detection:
        """``body.onnx`` on a padded batch (`finetune.inference.core.SplitForward.detect`)."""
        if pixel_mask is None:
            pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.int64)
        feeds = {
            "pixel_values": pixel_values.detach().to("cpu", torch.float32).numpy(),
            "pixel_mask": pixel_mask.detach().to("cpu", torch.int64).numpy(),
        }
        outputs = dict(zip(BODY_OUTPUTS, self.body.run(list(BODY_OUTPUTS), feeds), strict=True))
        return Detection(
            logits=torch.from_numpy(outputs["logits"]),
            pred_boxes=torch.from_numpy(outputs["pred_boxes"]),
            state={name: outputs[name] for name in FEATURE_OUTPUTS},
        )

    def masks(self, detection: Detection, image_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """``mask_head.onnx`` on the selected pairs: ``(N, H/4, W/4)`` mask logits."""
        features = detection.state
        if image_index.numel() == 0:
            return torch.zeros((0, *features["res2"].shape[-2:]), dtype=torch.float32)
        feeds = dict(features)
        feeds["image_index"] = image_index.to("cpu", torch.int64).numpy()
        feeds["query_index"] = query_index.to("cpu", torch.int64).numpy()
        (masks,) = self.mask_head.run(list(MASK_HEAD_OUTPUTS), feeds)
        return torch.from_numpy(np.ascontiguousarray(masks))
