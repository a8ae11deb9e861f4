"""The model card (`README.md`) of a trained checkpoint folder, built with huggingface_hub.

Metadata (`ModelCardData` + `EvalResult` for the model-index) and a Markdown body are read from the
folder written by `finetune/train.py` (interface 3): `config.json` (labels, stuff labels),
`training_config.yaml` (recipe) and `all_results.json` (metrics). Missing optional keys (hardware,
run time, per-class PQ...) are left out of the card, never invented.
"""

from __future__ import annotations

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


def as_percent(value: float) -> float:
    """Metrics are fractions in [0, 1] (the PQ/mAP accumulators); cards show percentages."""
    value = float(value)
    return round(value * 100.0 if abs(value) <= 1.0 else value, 2)


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
            f"{'–' if pq is None else f'{as_percent(pq):.1f}'} |"
        )
    return "\n".join(rows)


def _stage_lines(training_config: dict[str, Any]) -> list[str]:
    stages = (training_config.get("run") or {}).get("stages") or ["detection", "masks"]
    what = {
        "detection": "box model (backbone, transformer, class and box heads); mask head frozen",
        "masks": "mask head only; the detector is frozen",
    }
    lines = []
    for number, stage in enumerate(stages, start=1):
        section = training_config.get(stage) or {}
        facts = [
            f"{section['epochs']} epochs" if "epochs" in section else None,
            f"batch size {section['batch_size']}" if "batch_size" in section else None,
            f"lr {section['lr']:g}" if isinstance(section.get("lr"), int | float) else None,
            f"backbone lr {section['backbone_lr']:g}"
            if isinstance(section.get("backbone_lr"), int | float)
            else None,
            f"weight decay {section['weight_decay']:g}"
            if isinstance(section.get("weight_decay"), int | float)
            else None,
            f"gradient clip {section['max_grad_norm']}" if section.get("max_grad_norm") is not None else None,
        ]
        lines.append(
            f"- Stage {number}, **{stage}** — {what.get(stage, stage)}: "
            + ", ".join(f for f in facts if f)
            + "."
        )
    return lines


def build_model_card(
    config: dict[str, Any],
    training_config: dict[str, Any],
    results: dict[str, Any],
    repo_id: str,
    license: str = DEFAULT_LICENSE,
    dataset_id: str | None = None,
    extra_tags: list[str] | None = None,
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

    Returns:
        A `ModelCard` whose metadata has ``library_name: transformers``, ``pipeline_tag:
        image-segmentation``, license, base model, datasets, tags and the model-index results.
    """
    base = base_model_id(training_config)
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
            metric_value=as_percent(results[key]),
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
    content = f"---\n{card_data.to_yaml()}\n---\n\n{_body(config, training_config, results, repo_id, base, dataset_name)}"
    return ModelCard(content)


def _body(
    config: dict[str, Any],
    training_config: dict[str, Any],
    results: dict[str, Any],
    repo_id: str,
    base: str | None,
    dataset_name: str,
) -> str:
    """The Markdown body of the card: one section per function, in reading order."""
    threshold = score_threshold(config, training_config)
    return "\n\n".join(
        [
            _intro_section(config, repo_id),
            _results_section(training_config, results, dataset_name),
            _classes_section(config, results),
            _usage_section(repo_id, threshold),
            _recipe_section(training_config, results, base, dataset_name),
            _limitations_section(config),
            CITATION,
        ]
    )


def _intro_section(config: dict[str, Any], repo_id: str) -> str:
    id2label = config["id2label"]
    stuff = {int(i) for i in config.get("stuff_label_ids") or []}
    n_stuff = sum(1 for k in id2label if int(k) in stuff)
    n_things = len(id2label) - n_stuff
    return f"""# {repo_id.split("/")[-1]}

A DETR{_backbone_name(config)} panoptic segmentation model fine-tuned on construction-site photos annotated in CVAT
({n_things} thing and {n_stuff} stuff classes), trained with the detr-panoptic tooling in two
stages: the box model first, then the mask head with the detector frozen."""


def _results_section(training_config: dict[str, Any], results: dict[str, Any], dataset_name: str) -> str:
    data = training_config.get("data") or {}
    metric_rows = [
        f"| {display} | {as_percent(results[key]):.1f} |"
        for key, _, display in METRICS
        if isinstance(results.get(key), int | float)
    ]
    results_block = (
        "| metric | value (%) |\n|---|---:|\n" + "\n".join(metric_rows)
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


def _usage_section(repo_id: str, threshold: float) -> str:
    return f"""## How to use

With the `image-segmentation` pipeline (transformers >= 5):

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{repo_id}")
for segment in segmenter("site.jpg", threshold={threshold}):
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
```

In the detr-panoptic repository, `PanopticPredictor.from_pretrained("{repo_id}")` does this in batches,
`python finetune/predict.py IMAGES --model {repo_id} --out preds` writes COCO-panoptic PNGs + JSON and
colour overlays, and `python demo.py --model {repo_id}` opens a small web demo."""


def _recipe_section(
    training_config: dict[str, Any], results: dict[str, Any], base: str | None, dataset_name: str
) -> str:
    """Where the model started, its data, each stage's settings, augmentation, precision, hardware, time."""
    data = training_config.get("data") or {}
    run = training_config.get("run") or {}
    facts = [
        f"- Started from: `{base}`" if base else "- Started from: a local checkpoint / random initialisation",
        f"- Training data: {dataset_name} (split `{data.get('train_split', 'train')}`; "
        f"evaluated on `{data.get('eval_split', 'val')}`)",
        *_stage_lines(training_config),
    ]
    if data.get("train_scales"):
        scales = data["train_scales"]
        facts.append(
            f"- Augmentation: multi-scale shortest edge {min(scales)}–{max(scales)} px (max {data.get('max_size')}), "
            f"horizontal flip p={data.get('hflip_prob')}, random crop {'on' if data.get('random_crop') else 'off'}; "
            f"evaluation at shortest edge {data.get('eval_size')} px"
        )
    if run.get("mixed_precision"):
        facts.append(f"- Mixed precision: {run['mixed_precision']}; seed {run.get('seed')}")
    runtime = _first(results, RUNTIME_KEYS)
    hardware = _first(results, HARDWARE_KEYS)
    hw = [str(hardware)] if hardware else []
    if results.get("num_processes"):
        hw.append(f"{results['num_processes']} process(es)")
    facts.append(f"- Hardware: {', '.join(hw) if hw else 'not recorded'}")
    facts.append(f"- Training time: {_duration(runtime) if runtime is not None else 'not recorded'}")
    return f"""## Training recipe

{chr(10).join(facts)}

The full configuration is in `training_config.yaml`, the final metrics in `all_results.json`."""


def _limitations_section(config: dict[str, Any]) -> str:
    return f"""## Limitations

- Trained on a small, domain-specific set of construction-site photos: expect poor results on other
  scenes, viewpoints, weather and lighting, and on classes it was not trained on.
- Stuff classes (floor, wall, sky, ground...) are large regions with loose boundaries, often annotated
  less carefully than things: their quality is usually lower (compare PQ stuff with PQ things).
- DETR finds at most `num_queries` ({config.get("num_queries", "?")}) segments per image and misses
  small objects more often than large ones.
- Scores are not calibrated probabilities; tune `threshold` on your own data.
- Not suitable for safety-critical decisions (e.g. worker safety monitoring) without human review."""


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
