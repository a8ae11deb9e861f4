"""The ONNX export (`finetune.export`) and its ONNX Runtime backend.

Tiny models: a random `DetrForSegmentation` built in code (folder, CLI, opsets) and the shipped, trained
`pretrained/tiny-detr-panoptic` (parity: a random model's near-equal masks tie at most pixels). Parity with
the PyTorch inference core, through the same post-processing:
the same segments (count, labels) per image, id maps equal on >= 99.9 % of the pixels, scores within 1e-4,
on mixed-size batches of 1 and 4 images, with some / no / every query passing, stuff fused.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from transformers import DetrForSegmentation, DetrImageProcessor

from finetune.export import cli
from finetune.export.compare import compare_predictions
from finetune.export.exporter import REPO_SAMPLE_IMAGE, ExportError, export_model
from finetune.export.layout import BODY_FILE, MANIFEST_FILE, MASK_HEAD_FILE
from finetune.export.runtime import MISSING_RUNTIME, OnnxPanopticModel, execution_providers
from finetune.inference import ModelLoadError, PanopticPredictor
from finetune.inference.core import PostProcessing, predict_batch
from finetune.modeling.loading import load_checkpoint
from tests.conftest import tiny_detr_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pretrained" / "tiny-detr-panoptic"
NUM_LABELS = 5
STUFF = frozenset({3, 4})
PHOTO_SIZES = [(320, 240), (200, 330), (256, 256), (300, 180)]  # (width, height)


def _processor() -> DetrImageProcessor:
    return DetrImageProcessor(format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96})


def _checkpoint(folder: Path) -> Path:
    """A random tiny `DetrForSegmentation` checkpoint (labels 3, 4 stuff)."""
    torch.manual_seed(0)
    model = DetrForSegmentation(
        tiny_detr_config(num_labels=NUM_LABELS, num_queries=20, stuff_label_ids=sorted(STUFF))
    ).eval()
    model.save_pretrained(folder)
    _processor().save_pretrained(folder)
    return folder


def _shipped_every_query_passes(folder: Path) -> Path:
    """The shipped checkpoint with "no object" never winning (fp32 copy)."""
    model = DetrForSegmentation.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    with torch.no_grad():
        model.detr.class_labels_classifier.bias[-1] = -100.0
    model.save_pretrained(folder)
    shutil.copy(SHIPPED / "preprocessor_config.json", folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, export) of the random tiny model."""
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = _checkpoint(root / "checkpoint")
    export_model(str(checkpoint), root / "export")
    return checkpoint, root / "export"


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory) -> Path:
    export = tmp_path_factory.mktemp("shipped") / "onnx"
    export_model(str(SHIPPED), export)
    return export


@pytest.fixture(scope="module")
def all_pass_export(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, export) of the shipped checkpoint where every query passes any threshold."""
    root = tmp_path_factory.mktemp("all_pass")
    checkpoint = _shipped_every_query_passes(root / "checkpoint")
    export_model(str(checkpoint), root / "onnx")
    return checkpoint, root / "onnx"


def _photos(count: int) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """Sample photos at mixed sizes (portrait and landscape, so the batch is padded in both directions)."""
    photos = sorted((REPO / "sample_data").rglob("*.jpg"))
    images = [Image.open(p).convert("RGB").resize(size) for p, size in zip(photos, PHOTO_SIZES, strict=False)][:count]
    return images, [(image.height, image.width) for image in images]


def _both(checkpoint: Path, export: Path, count: int, threshold: float | None = None):
    """The PyTorch core's and the export's `BatchOutput` of one batch, the checkpoint's settings."""
    from finetune.inference.metadata import postprocess_settings, stuff_label_ids

    model = load_checkpoint(str(checkpoint))[0]
    processor = DetrImageProcessor.from_pretrained(checkpoint)
    images, sizes = _photos(count)
    inputs = processor(images=images, return_tensors="pt")
    settings = postprocess_settings(model.config, threshold)
    post = PostProcessing(**settings, label_ids_to_fuse=frozenset(stuff_label_ids(model.config)))
    args = (processor, inputs["pixel_values"], inputs["pixel_mask"], sizes, post)
    return predict_batch(model, *args), predict_batch(OnnxPanopticModel(export, device="cpu"), *args)


def assert_parity(reference, candidate) -> None:
    """The issue's parity goal, image by image."""
    assert len(reference) == len(candidate)
    for ref, cand in zip(reference, candidate, strict=True):
        assert sorted(s["label_id"] for s in ref.segments) == sorted(s["label_id"] for s in cand.segments)
        assert ref.ids.shape == cand.ids.shape
        assert np.mean(ref.ids == cand.ids) >= 0.999
        ref_scores = {s["id"]: s["score"] for s in ref.segments}
        for seg in cand.segments:
            assert abs(seg["score"] - ref_scores[seg["id"]]) <= 1e-4


def test_export_folder(exported):
    _, export = exported
    assert sorted(p.name for p in export.iterdir()) == sorted(
        [BODY_FILE, MASK_HEAD_FILE, MANIFEST_FILE, "README.md", "config.json", "preprocessor_config.json"]
    )
    for name in (BODY_FILE, MASK_HEAD_FILE):
        onnx.checker.check_model(str(export / name), full_check=True)
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    assert manifest["opset"] == 17 and manifest["quantize"] == "none"
    assert manifest["validation"]["predictions"]["same_segments"] == 1
    assert manifest["validation"]["mask_pairs_compared"] >= 5  # the mask head was compared
    assert [label["isthing"] for label in manifest["labels"]] == [True, True, True, False, False]
    config = json.loads((export / "config.json").read_text())
    assert config["panoptic_postprocess"] == manifest["postprocess"]  # the thresholds travel with it
    assert "PanopticPredictor.from_pretrained" in (export / "README.md").read_text()
    assert not list(export.parent.glob(".export.tmp-*"))  # written through a temporary folder


@pytest.mark.parametrize("count", [1, 4])
def test_parity_some_queries_pass(shipped_export, count):
    torch_out, onnx_out = _both(SHIPPED, shipped_export, count)
    assert 0 < onnx_out.mask_queries < 10 * count  # the checkpoint's threshold keeps some of its 10 queries
    assert onnx_out.mask_queries == torch_out.mask_queries
    assert all(p.segments for p in torch_out.predictions)
    assert_parity(torch_out.predictions, onnx_out.predictions)
    torch.testing.assert_close(onnx_out.logits, torch_out.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(onnx_out.pred_boxes, torch_out.pred_boxes, rtol=1e-4, atol=1e-5)


def test_parity_no_query_passes(shipped_export):
    torch_out, onnx_out = _both(SHIPPED, shipped_export, 4, threshold=1.0)
    assert onnx_out.mask_queries == 0
    assert all(not p.segments and not p.ids.any() for p in onnx_out.predictions)
    assert_parity(torch_out.predictions, onnx_out.predictions)


def test_parity_every_query_passes_and_stuff_fused(all_pass_export):
    checkpoint, export = all_pass_export
    torch_out, onnx_out = _both(checkpoint, export, 4, threshold=0.0)
    assert onnx_out.mask_queries == 10 * 4
    assert_parity(torch_out.predictions, onnx_out.predictions)
    stuff = set(json.loads((export / "config.json").read_text())["stuff_label_ids"])
    fused = [s for p in onnx_out.predictions for s in p.segments if s["was_fused"]]
    assert fused and {s["label_id"] for s in fused} <= stuff
    for prediction in onnx_out.predictions:  # one segment per stuff label
        labels = [s["label_id"] for s in prediction.segments if s["label_id"] in stuff]
        assert len(labels) == len(set(labels))


def test_shipped_checkpoint_through_the_predictor(shipped_export):
    export = shipped_export
    photos = sorted((REPO / "sample_data").rglob("*.jpg"))[:3]
    images = [Image.open(p).convert("RGB") for p in photos]
    images.append(images[0].resize((200, 330)))  # another size and orientation in the same batch
    reference = PanopticPredictor.from_pretrained(SHIPPED, batch_size=4).predict(images)
    onnx_predictor = PanopticPredictor.from_pretrained(export, batch_size=4, device="cpu")
    assert isinstance(onnx_predictor.model, OnnxPanopticModel)
    candidate = onnx_predictor.predict(images)
    assert sum(len(p.segments) for p in reference) > 0
    assert_parity(reference, candidate)
    # The predictor's description (names, thing/stuff, boxes, areas) is the same code for both.
    assert [[(s["name"], s["isthing"], s["area"]) for s in p.segments] for p in reference] == [
        [(s["name"], s["isthing"], s["area"]) for s in p.segments] for p in candidate
    ]
    with pytest.raises(ValueError, match="full forward"):
        PanopticPredictor.from_pretrained(export, full_forward=True)


def _fused_op_types(graph: Path, tmp_path: Path) -> set[str]:
    """The operators ONNX Runtime runs for `graph` on the CPU (after its graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{graph.stem}.optimized.onnx")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_int8_export_is_static_and_close_to_fp32(shipped_export, tmp_path):
    """int8 = static QDQ quantization that ONNX Runtime fuses into QLinearConv (fast with AVX2 alone), not
    dynamic quantization's ConvInteger (slower than fp32 without VNNI); its predictions stay close to fp32's."""
    export = tmp_path / "int8"
    manifest = export_model(str(SHIPPED), export, quantize="int8")  # calibrated on the repository's photos
    assert manifest["quantize"] == "int8" and manifest["quantized_ops"] == ["Conv", "MatMul"]
    assert manifest["calibration_images"] == len(list(REPO_SAMPLE_IMAGE.parent.glob("*.jpg")))
    assert not [p.name for p in export.iterdir() if p.name.startswith(".")]  # the calibration's work files are gone
    body_ops = _fused_op_types(export / BODY_FILE, tmp_path)
    assert "QLinearConv" in body_ops and not {"ConvInteger", "Conv", "FusedConv"} & body_ops, body_ops
    mask_ops = _fused_op_types(export / MASK_HEAD_FILE, tmp_path)
    assert "QLinearConv" in mask_ops and "ConvInteger" not in mask_ops, mask_ops
    # ... except the mask head's first convolution (finetune.export.quantize.FP32_WEIGHT_PREFIXES), kept fp32
    mask_head = onnx.load(str(export / MASK_HEAD_FILE))
    weights = [n.input[1] for n in mask_head.graph.node if n.op_type == "Conv"]
    assert [w for w in weights if not w.endswith("_DequantizeLinear_Output")] == ["mask_head.conv1.conv.weight"]
    # int8 weights: under the fp16 checkpoint's size (half the fp32 export's)
    assert manifest["size_bytes"][BODY_FILE] < (SHIPPED / "model.safetensors").stat().st_size
    assert manifest["int8_vs_fp32"]["images"] == 1
    photos = [Image.open(p).convert("RGB") for p in sorted(REPO_SAMPLE_IMAGE.parent.glob("*.jpg"))[:6]]
    fp32 = PanopticPredictor.from_pretrained(shipped_export).predict(photos)
    int8_predictor = PanopticPredictor.from_pretrained(export)
    int8 = int8_predictor.predict(photos)
    assert [p.ids.shape for p in int8] == [photo.size[::-1] for photo in photos]
    closeness = compare_predictions(fp32, int8, len(int8_predictor.id2label), int8_predictor.stuff_label_ids)
    assert closeness["segments"][0] > 0 and closeness["pq"] >= 0.9, closeness


def test_int8_calibration_errors_are_one_line(exported, tmp_path, caplog, monkeypatch):
    checkpoint, _ = exported
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--output-dir", str(out), "--quantize", "int8", "--calibration-images"]
    assert "not a folder" in _cli_error([*argv, str(tmp_path / "missing")], caplog)
    caplog.clear()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photo")
    assert "no photo" in _cli_error([*argv, str(tmp_path / "empty")], caplog)
    caplog.clear()
    # Installed without the repository's sample photos and no folder given.
    monkeypatch.setattr("finetune.export.quantize.REPO_CALIBRATION_DIR", tmp_path / "absent")
    assert "--calibration-images DIR" in _cli_error(argv[:-1], caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_failed_validation_writes_nothing(exported, tmp_path, monkeypatch):
    checkpoint, _ = exported
    monkeypatch.setattr("finetune.export.exporter.ATOL", 0.0)
    monkeypatch.setattr("finetune.export.exporter.RTOL", 0.0)
    with pytest.raises(ExportError, match="validation failed"):
        export_model(str(checkpoint), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _cli_error(argv, caplog) -> str:
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]


def test_cli_errors(exported, tmp_path, caplog):
    checkpoint, _ = exported
    out = tmp_path / "out"
    assert "no such checkpoint folder" in _cli_error(["--model", str(tmp_path / "missing"), "--output-dir", str(out)], caplog)
    caplog.clear()
    assert "unsupported --opset 9" in _cli_error(["--model", str(checkpoint), "--output-dir", str(out), "--opset", "9"], caplog)
    caplog.clear()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "cannot write" in _cli_error(["--model", str(checkpoint), "--output-dir", str(blocker / "out")], caplog)
    caplog.clear()
    out.mkdir()
    assert "--overwrite" in _cli_error(["--model", str(checkpoint), "--output-dir", str(out)], caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out"] and not list(out.iterdir())


def test_calibration_images_without_int8_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--calibration-images", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--calibration-images only applies to --quantize int8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_end_to_end_one_line_error_and_success(exported, tmp_path):
    """The installed entry point (`python -m finetune.export`): a usage error is one line on stderr, exit 2."""
    checkpoint, _ = exported
    run = subprocess.run(
        [sys.executable, "-m", "finetune.export", "--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()
    run = subprocess.run(
        [sys.executable, "-m", "finetune.export", "--model", str(checkpoint), "--output-dir", str(tmp_path / "o"),
         "--opset", "14"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert "validated against PyTorch" in run.stderr
    assert json.loads((tmp_path / "o" / MANIFEST_FILE).read_text())["opset"] == 14


def test_missing_onnxruntime_is_one_line(exported, tmp_path, monkeypatch):
    checkpoint, export = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    with pytest.raises(ImportError, match="pip install -e '.\\[export\\]'"):
        export_model(str(checkpoint), tmp_path / "out")
    with pytest.raises(ModelLoadError) as err:
        PanopticPredictor.from_pretrained(export)
    assert MISSING_RUNTIME in str(err.value) and "\n" not in str(err.value)


def test_execution_providers():
    cpu_only, with_cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers(None, cpu_only) == cpu_only
    assert execution_providers(None, with_cuda) == with_cuda
    assert execution_providers("cpu", with_cuda) == cpu_only
    assert execution_providers("cuda:0", with_cuda) == with_cuda
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        execution_providers("cuda", cpu_only)
    with pytest.raises(ValueError, match="cpu or cuda"):
        execution_providers("mps", with_cuda)


def test_predict_cli_and_demo_accept_an_export(all_pass_export, tmp_path):
    import demo
    from finetune import predict

    _, export = all_pass_export
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "preds"
    assert predict.main([str(photo), "--model", str(export), "--output-dir", str(out), "--quiet", "--threshold", "0"]) == 0
    written = json.loads((out / "panoptic_predictions.json").read_text())
    assert written["annotations"][0]["segments_info"]
    predictor = PanopticPredictor.from_pretrained(export)
    overlay, rows = demo.segment_image(predictor, Image.open(photo), 0.0)
    assert overlay.size[0] == 90 and rows  # the legend goes below the photo


def test_push_to_hub_uploads_the_export(shipped_export, exported, tmp_path, caplog):
    from finetune.hub import cli as hub_cli
    from finetune.hub.push import ModelFolderError, push_model_dir

    upload = tmp_path / "upload"
    push_model_dir(SHIPPED, "someone/site-model", dry_run_dir=upload, onnx_dir=shipped_export)
    assert sorted(p.name for p in (upload / "onnx").iterdir()) == sorted(p.name for p in shipped_export.iterdir())
    card = (upload / "README.md").read_text()
    assert "## ONNX export" in card and 'hf download someone/site-model --include "onnx/*"' in card
    assert 'PanopticPredictor.from_pretrained("site-model/onnx")' in card
    # The staged onnx/ folder is an export the predictor loads.
    assert isinstance(PanopticPredictor.from_pretrained(upload / "onnx").model, OnnxPanopticModel)
    # Without the flag, no onnx/ folder and no section.
    push_model_dir(SHIPPED, "someone/site-model", dry_run_dir=tmp_path / "plain")
    assert not (tmp_path / "plain" / "onnx").exists()
    assert "## ONNX export" not in (tmp_path / "plain" / "README.md").read_text()
    # An export of another model (other labels) is refused, nothing staged.
    with pytest.raises(ModelFolderError, match="labels differ"):
        push_model_dir(SHIPPED, "someone/site-model", dry_run_dir=tmp_path / "other", onnx_dir=exported[1])
    assert not (tmp_path / "other").exists()
    with caplog.at_level(logging.ERROR):
        code = hub_cli.main(
            ["--model", str(SHIPPED), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "x"), "--onnx", str(tmp_path)]
        )
    assert code == 1 and "not an ONNX export folder" in caplog.text
