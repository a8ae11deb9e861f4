"""The model card (`README.md`) of a trained checkpoint folder, built with huggingface_hub.

Metadata (`ModelCardData` + `EvalResult` for the model-index) and a Markdown body are read from the
folder written by `finetune/train.py` (interface 3): `config.json` (labels, stuff labels),
`training_config.yaml` (recipe), `all_results.json` (metrics) and `train_results.json` (start point,
hardware, time per stage, data size). Missing facts are "not recorded", never invented; the
limitations are derived from the numbers. Metrics are shown as fractions in [0, 1], the unit of
`all_results.json` and of the training logs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from finetune.config import DEFAULT_THRESHOLD

DEFAULT_LICENSE = "apache-2.0"  # the license of facebook/detr-resnet-50-panoptic
DEFAULT_TAGS = ["detr", "panoptic-segmentation", "image-segmentation", "vision", "construction"]

# (key in all_results.json, model-index metric type, display name)
METRICS = [
    ("pq", "pq", "PQ"),
    ("sq", "sq", "SQ"),
    ("rq", "rq", "RQ"),
    ("pq_things", "pq_things", "PQ things"),
    ("pq_stuff", "pq_stuff", "PQ stuff"),
    ("box_map", "box_map", "box mAP"),
]
# Keys for run facts that training may or may not record (first one found wins).
RUNTIME_KEYS = ("train_runtime", "train_runtime_s", "train_time_s", "total_train_time_s", "runtime_s")
HARDWARE_KEYS = ("hardware", "device", "device_name", "gpu")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def as_fraction(value: float) -> float:
    """Metrics are fractions in [0, 1] (the PQ/mAP accumulators, `all_results.json`); so is the card."""
    return round(float(value), 4)


def _first(mapping: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((mapping[k] for k in keys if mapping.get(k) not in (None, "")), None)


def _duration(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _backbone_name(config: dict[str, Any]) -> str:
    """`` (ResNet-50)`` from the config's (timm) backbone name, or empty when it is not recorded."""
    name = (config.get("backbone_config") or {}).get("backbone") or config.get("backbone")
    if not isinstance(name, str) or not name:
        return ""
    return f" ({name.replace('resnet', 'ResNet-')})"


def base_model_id(training_config: dict[str, Any]) -> str | None:
    """The Hub id the run started from, if it was one (a local folder or a random init is not)."""
    name = (training_config.get("model") or {}).get("model_name_or_path")
    if isinstance(name, str) and HUB_ID.match(name) and not Path(name).exists():
        return name
    return None


def score_threshold(config: dict[str, Any], training_config: dict[str, Any]) -> float:
    """The score threshold the card's metrics were computed with.

    `config.json`'s ``panoptic_postprocess`` (saved with the model, what inference tools default to),
    else the ``eval`` section of `training_config.yaml`, else the project default.
    """
    saved = (config.get("panoptic_postprocess") or {}).get("threshold")
    if saved is None:
        saved = (training_config.get("eval") or {}).get("threshold")
    return float(DEFAULT_THRESHOLD if saved is None else saved)


def classes_table(config: dict[str, Any], results: dict[str, Any]) -> str:
    """Markdown table: label id, class name, thing/stuff, PQ (when per-class PQ is known)."""
    stuff = {int(i) for i in config.get("stuff_label_ids") or []}
    per_class = results.get("per_class_pq") or {}
    rows = ["| label | class | type | PQ |", "|---:|---|---|---:|"]
    for label, name in sorted(((int(k), v) for k, v in config["id2label"].items())):
        pq = per_class.get(name)
        rows.append(
            f"| {label} | {name} | {'stuff' if label in stuff else 'thing'} | "
            f"{'–' if pq is None else f'{as_fraction(pq):.3f}'} |"
        )
    return "\n".join(rows)


def _stage_lines(training_config: dict[str, Any]) -> list[str]:
    """One line per stage trained, with the learning rates actually used: the masks stage trains the mask
    head only, and a `backbone_lr` of 0 freezes the backbone (no backbone lr to report then)."""
    stages = (training_config.get("run") or {}).get("stages") or ["detection", "masks"]
    what = {
        "detection": "box model (transformer, class and box heads{backbone}); mask head frozen",
        "masks": "mask head only; the detector (backbone included) is frozen",
    }
    lines = []
    for number, stage in enumerate(stages, start=1):
        section = training_config.get(stage) or {}
        backbone_lr = section.get("backbone_lr")
        backbone_trained = stage == "detection" and isinstance(backbone_lr, int | float) and backbone_lr > 0
        facts = [
            f"{section['epochs']} epochs" if "epochs" in section else None,
            f"batch size {section['batch_size']}" if "batch_size" in section else None,
            _lr_text(section) if isinstance(section.get("lr"), int | float) else None,
            f"backbone lr {backbone_lr:g}" if backbone_trained else None,
            f"weight decay {section['weight_decay']:g}"
            if isinstance(section.get("weight_decay"), int | float)
            else None,
            f"gradient clip {section['max_grad_norm']}" if section.get("max_grad_norm") is not None else None,
        ]
        if stage == "detection":
            backbone = ", backbone" if backbone_trained else "; backbone frozen"
            description = what[stage].format(backbone=backbone)
        else:
            description = what.get(stage, stage)
        lines.append(f"- Stage {number}, **{stage}** — {description}: " + ", ".join(f for f in facts if f) + ".")
    return lines


def _lr_text(section: dict[str, Any]) -> str:
    """`lr 0.001 (x0.1 after epoch 40)`: the StepLR schedule of `finetune/training/loop.py`."""
    text = f"lr {section['lr']:g}"
    gamma, epochs = section.get("lr_gamma"), section.get("epochs")
    if isinstance(gamma, int | float) and gamma < 1 and isinstance(epochs, int):
        drop = section.get("lr_drop_epochs") or max(1, math.ceil(epochs * 2 / 3))
        if drop < epochs:
            text += f" (×{gamma:g} after epoch {drop})"
    return text


def started_from(training_config: dict[str, Any], train_facts: dict[str, Any]) -> str:
    """`the Hub checkpoint X` / `the local checkpoint X` / `a random initialisation (...)`."""
    model = training_config.get("model") or {}
    recorded = train_facts.get("started_from") or {}
    name = recorded.get("name", model.get("model_name_or_path"))
    kind = recorded.get("kind")
    if name is None:
        overrides = recorded.get("config_overrides") or model.get("config_overrides") or {}
        keys = ("backbone", "d_model", "encoder_layers", "decoder_layers", "num_queries")
        described = ", ".join(f"{k} {overrides[k]}" for k in keys if k in overrides)
        return "a random initialisation (no pretrained weights" + (f"; DetrConfig {described})" if described else ")")
    if kind == "hub" or (kind is None and base_model_id(training_config)):
        return f"the Hub checkpoint [`{name}`](https://huggingface.co/{name})"
    return f"the local checkpoint `{name}`"


def build_model_card(
    config: dict[str, Any],
    training_config: dict[str, Any],
    results: dict[str, Any],
    repo_id: str,
    license: str = DEFAULT_LICENSE,
    dataset_id: str | None = None,
    extra_tags: list[str] | None = None,
    train_facts: dict[str, Any] | None = None,
) -> ModelCard:
    """The model card of a checkpoint.

    Args:
        config: Parsed `config.json` (``id2label``, ``stuff_label_ids``).
        training_config: Parsed `training_config.yaml` (sections model, data, detection, masks, eval, run).
        results: Parsed `all_results.json` (``pq``... as fractions, ``per_class_pq`` {name: pq}).
        repo_id: ``user/name`` the card is for.
        license: SPDX-like license id for the metadata.
        dataset_id: Hub dataset id of the training data, when it is published.
        extra_tags: Added to the default tags.
        train_facts: Parsed `train_results.json` (start point, hardware, time per stage, data size); None =
            the facts are "not recorded" (older folders: `hardware` / `train_runtime` in `results` are used).

    Returns:
        A `ModelCard` whose metadata has ``library_name: transformers``, ``pipeline_tag:
        image-segmentation``, license, base model, datasets, tags and the model-index results.
    """
    facts = _facts(results, train_facts or {})
    base = base_model_id(training_config) if (facts["started_from"] or {}).get("kind") in (None, "hub") else None
    data = training_config.get("data") or {}
    dataset_name = dataset_id or Path(str(data.get("dataset_dir") or "construction-site panoptic")).name
    split = data.get("eval_split", "val")
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Panoptic segmentation",
            dataset_type=dataset_id or "custom",
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=display,
            metric_value=as_fraction(results[key]),
        )
        for key, metric_type, display in METRICS
        if isinstance(results.get(key), int | float)
    ]
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        base_model=base,
        datasets=[dataset_id] if dataset_id else None,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(extra_tags or [])])),
        eval_results=eval_results or None,
    )
    body = _body(config, training_config, results, facts, repo_id, dataset_name)
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
    return ModelCard(content)


def _facts(results: dict[str, Any], train_facts: dict[str, Any]) -> dict[str, Any]:
    """The run's facts: `train_results.json`, else the keys older folders kept in `all_results.json`."""
    runtime = train_facts.get("train_runtime", _first(results, RUNTIME_KEYS))
    return {
        "started_from": train_facts.get("started_from"),
        "hardware": train_facts.get("hardware", _first(results, HARDWARE_KEYS)),
        "num_processes": train_facts.get("num_processes", results.get("num_processes")),
        "mixed_precision": train_facts.get("mixed_precision"),
        "stage_runtime": train_facts.get("stage_runtime") or {},
        "train_runtime": runtime,
        "train_samples": train_facts.get("train_samples"),
        "eval_samples": train_facts.get("eval_samples"),
    }


def _body(
    config: dict[str, Any],
    training_config: dict[str, Any],
    results: dict[str, Any],
    facts: dict[str, Any],
    repo_id: str,
    dataset_name: str,
) -> str:
    """The Markdown body of the card: one section per function, in reading order."""
    return "\n\n".join(
        [
            _intro_section(config, training_config, facts, repo_id, dataset_name),
            _results_section(training_config, results, dataset_name),
            _classes_section(config, results),
            _usage_section(repo_id, postprocess_settings(config, training_config)),
            _recipe_section(training_config, facts, dataset_name),
            _limitations_section(config, training_config, results, facts),
            CITATION,
        ]
    )


def postprocess_settings(config: dict[str, Any], training_config: dict[str, Any]) -> dict[str, float]:
    """threshold, mask_threshold, overlap_mask_area_threshold the metrics were computed with (see
    `score_threshold`); the two others only when recorded."""
    settings = {"threshold": score_threshold(config, training_config)}
    saved = {**(training_config.get("eval") or {}), **(config.get("panoptic_postprocess") or {})}
    for key in ("mask_threshold", "overlap_mask_area_threshold"):
        if isinstance(saved.get(key), int | float):
            settings[key] = float(saved[key])
    return settings


def _intro_section(
    config: dict[str, Any], training_config: dict[str, Any], facts: dict[str, Any], repo_id: str, dataset_name: str
) -> str:
    id2label = config["id2label"]
    stuff = {int(i) for i in config.get("stuff_label_ids") or []}
    n_stuff = sum(1 for k in id2label if int(k) in stuff)
    n_things = len(id2label) - n_stuff
    origin = started_from(training_config, facts)
    how = "trained from scratch" if origin.startswith("a random") else "fine-tuned"
    images = f", {facts['train_samples']} training images" if facts.get("train_samples") else ""
    return f"""# {repo_id.split("/")[-1]}

A DETR{_backbone_name(config)} panoptic segmentation model {how} on {dataset_name} (CVAT annotations{images};
{n_things} thing and {n_stuff} stuff classes), starting from {origin}. Trained with the detr-panoptic tooling
in two stages: the box model first, then the mask head with the detector frozen."""


def _results_section(training_config: dict[str, Any], results: dict[str, Any], dataset_name: str) -> str:
    data = training_config.get("data") or {}
    metric_rows = [
        f"| {display} | {as_fraction(results[key]):.3f} |"
        for key, _, display in METRICS
        if isinstance(results.get(key), int | float)
    ]
    results_block = (
        "| metric | value (0–1) |\n|---|---:|\n" + "\n".join(metric_rows)
        if metric_rows
        else "No evaluation results recorded."
    )
    return f"""## Results

On the `{data.get("eval_split", "val")}` split of {dataset_name} (panoptic quality, panopticapi definition;
box mAP: COCO mAP@[.5:.95] of the detection boxes):

{results_block}"""


def _classes_section(config: dict[str, Any], results: dict[str, Any]) -> str:
    return f"""## Classes

Things are counted per instance; stuff classes (one region per class and image) are fused.

{classes_table(config, results)}"""


# Measured with `python bench/inference_speed.py --sizes 800x1066 --batch-sizes 1 --sides ours,full,pipeline`
# (R50 architecture, random weights, 2 CPU threads, 10 of the 100 queries above the threshold).
INFERENCE_COST = {
    "predictor": "2.7 GB of RAM and 3.5 s",
    "pipeline": "12.6 GB of RAM and 32 s",
}


def _usage_section(repo_id: str, settings: dict[str, float]) -> str:
    threshold = settings["threshold"]
    pipeline_args = ", ".join(f"{key}={value}" for key, value in settings.items())
    return f"""## How to use

The cheapest path is the detr-panoptic package's `PanopticPredictor` (`pip install -e .` in a clone of the
detr-panoptic repository): it runs the mask head only on the queries above the threshold, fuses each
stuff class into one segment and batches photos of different sizes. For one 800x1066 photo on 2 CPU
threads, the R50 architecture takes {INFERENCE_COST["predictor"]} this way, against
{INFERENCE_COST["pipeline"]} with the `image-segmentation` pipeline, which runs the mask head on all 100
queries.

```python
from PIL import Image
from finetune.inference import PanopticPredictor

predictor = PanopticPredictor.from_pretrained("{repo_id}")   # the checkpoint's thresholds
[prediction] = predictor.predict([Image.open("site.jpg").convert("RGB")])
# prediction.ids: (H, W) segment ids; prediction.segments: id, label_id, name, isthing, score, bbox, area
```

`python finetune/predict.py IMAGES --model {repo_id} --output-dir preds` writes COCO-panoptic PNGs + JSON
and colour overlays, and `python demo.py --model {repo_id}` opens a small web demo.

With transformers alone, the `image-segmentation` pipeline (transformers >= 5):

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{repo_id}")
for segment in segmenter("site.jpg", {pipeline_args}):
    print(segment["label"], segment["score"], segment["mask"].size)
```

The pipeline cannot fuse stuff classes (it never passes `label_ids_to_fuse`), so a stuff class
such as a wall may come back as several segments. For proper panoptic output with one segment per
stuff class, post-process yourself with the stuff labels saved in the config:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, DetrForSegmentation

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = DetrForSegmentation.from_pretrained("{repo_id}").eval()
image = Image.open("site.jpg").convert("RGB")
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
result = processor.post_process_panoptic_segmentation(
    outputs, threshold={threshold}, label_ids_to_fuse=set(model.config.stuff_label_ids), target_sizes=[image.size[::-1]]
)[0]
# result["segmentation"]: (H, W) segment ids; result["segments_info"]: id, label_id, score
```"""


def _recipe_section(training_config: dict[str, Any], facts: dict[str, Any], dataset_name: str) -> str:
    """Where the model started, its data, each stage's settings, augmentation, hardware and time."""
    data = training_config.get("data") or {}
    run = training_config.get("run") or {}
    images = f", {facts['train_samples']} images" if facts.get("train_samples") else ""
    evaluated = f" ({facts['eval_samples']} images)" if facts.get("eval_samples") else ""
    lines = [
        f"- Started from: {started_from(training_config, facts)}",
        f"- Training data: {dataset_name} (split `{data.get('train_split', 'train')}`{images}; "
        f"evaluated on `{data.get('eval_split', 'val')}`{evaluated})",
        *_stage_lines(training_config),
    ]
    if data.get("train_scales"):
        scales = data["train_scales"]
        lines.append(
            f"- Augmentation: multi-scale shortest edge {min(scales)}–{max(scales)} px (max {data.get('max_size')}), "
            f"horizontal flip p={data.get('hflip_prob')}, random crop {'on' if data.get('random_crop') else 'off'}; "
            f"evaluation at shortest edge {data.get('eval_size')} px"
        )
    lines.append(f"- Hardware: {_hardware(facts, run)}")
    lines.append(f"- Training time: {_training_time(facts)}; seed {run.get('seed', 'not recorded')}")
    return f"""## Training recipe

{chr(10).join(lines)}

The full configuration is in `training_config.yaml`, the final metrics in `all_results.json`, the run's
facts (hardware, time per stage) in `train_results.json` when recorded."""


def _hardware(facts: dict[str, Any], run: dict[str, Any]) -> str:
    if not facts.get("hardware"):
        return "not recorded"
    count = facts.get("num_processes")
    precision = facts.get("mixed_precision") or run.get("mixed_precision")
    text = str(facts["hardware"]) + (f" × {count} process(es)" if count else "")
    return text + (f", mixed precision {precision}" if precision else "")


def _training_time(facts: dict[str, Any]) -> str:
    if facts.get("train_runtime") is None:
        return "not recorded"
    per_stage = ", ".join(f"{stage} {_duration(sec)}" for stage, sec in facts["stage_runtime"].items())
    return _duration(facts["train_runtime"]) + (f" ({per_stage})" if per_stage else "")


def _limitations_section(
    config: dict[str, Any], training_config: dict[str, Any], results: dict[str, Any], facts: dict[str, Any]
) -> str:
    """Limitations that follow from this model's numbers first, then those of DETR and of any model."""
    lines = []
    n_train = facts.get("train_samples")
    if started_from(training_config, facts).startswith("a random"):
        lines.append(
            "- Trained from a random initialisation, without pretrained weights"
            + (f", on {n_train} images" if n_train else "")
            + ": a demonstration of the pipeline, not a model to use."
        )
    elif isinstance(n_train, int) and n_train < 500:
        lines.append(f"- Fine-tuned on only {n_train} images: expect poor results on scenes unlike them.")
    things, stuff = results.get("pq_things"), results.get("pq_stuff")
    if isinstance(things, int | float) and isinstance(stuff, int | float) and abs(things - stuff) >= 0.05:
        worse, better = ("things", "stuff") if things < stuff else ("stuff", "things")
        low, high = sorted((things, stuff))
        lines.append(f"- {worse.title()} are segmented much worse than {better}: PQ {worse} {low:.3f} "
                     f"vs PQ {better} {high:.3f}.")
    weak = sorted((pq, name) for name, pq in (results.get("per_class_pq") or {}).items() if pq < 0.1)
    if weak:
        names = ", ".join(f"{name} ({pq:.2f})" for pq, name in weak)
        lines.append(f"- Classes with PQ below 0.1, mostly missed or wrong: {names}.")
    if isinstance(results.get("pq"), int | float) and results["pq"] < 0.3:
        lines.append(f"- Overall PQ {results['pq']:.3f}: many segments are missed or wrong.")
    lines += [
        "- The data is domain-specific: expect worse results on other scenes, viewpoints, weather and lighting,"
        " and nothing on classes it was not trained on.",
        f"- DETR finds at most `num_queries` ({config.get('num_queries', '?')}) segments per image and misses"
        " small objects more often than large ones.",
        "- Scores are not calibrated probabilities; tune `threshold` on your own data.",
        "- Not suitable for safety-critical decisions (e.g. worker safety monitoring) without human review.",
    ]
    return "## Limitations\n\n" + "\n".join(lines)


CITATION = """## Citation

```bibtex
@inproceedings{carion2020detr,
  title     = {End-to-End Object Detection with Transformers},
  author    = {Carion, Nicolas and Massa, Francisco and Synnaeve, Gabriel and Usunier, Nicolas and
               Kirillov, Alexander and Zagoruyko, Sergey},
  booktitle = {ECCV},
  year      = {2020}
}
```
"""


def onnx_section(repo_id: str, manifest: dict[str, Any]) -> str:
    """The card's section on the ONNX export uploaded beside the weights (``push_to_hub.py --onnx``).

    Args:
        repo_id: ``user/name`` the card is for.
        manifest: The export's ``export.json`` (`finetune.export.exporter.export_model`).
    """
    validation = manifest.get("validation") or {}
    predictions = validation.get("predictions") or {}
    weights = "int8 (dynamic quantization)" if manifest.get("quantize") == "int8" else "fp32"
    checked = (
        f" Before upload it was checked with `onnx.checker` and compared with the PyTorch model on a photo "
        f"({predictions.get('same_segments')}/{predictions.get('images')} with the same segments)."
        if predictions
        else ""
    )
    return f"""## ONNX export

The `onnx/` folder holds an ONNX export of this model (opset {manifest.get("opset")}, {weights} weights),
written by `detr-panoptic-export`: `body.onnx` (backbone, transformer, class and box heads; any batch and
image size) and `mask_head.onnx` (the mask head, run only on the queries above the threshold), with the
config and image-processor files it needs.{checked} It runs on ONNX Runtime with the same API and
post-processing as the PyTorch weights (`pip install -e ".[export]"` in a clone of detr-panoptic):

```bash
hf download {repo_id} --include "onnx/*" --local-dir {repo_id.split("/")[-1]}
```

```python
from PIL import Image
from finetune.inference import PanopticPredictor

predictor = PanopticPredictor.from_pretrained("{repo_id.split("/")[-1]}/onnx")   # ONNX Runtime, CPU or CUDA
[prediction] = predictor.predict([Image.open("site.jpg").convert("RGB")])
```

Without this package, `onnx/README.md` describes the two graphs' inputs and outputs and the
post-processing."""
