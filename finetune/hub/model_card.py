"""The model card (`README.md`) of a trained checkpoint folder, built with huggingface_hub.

Metadata (`ModelCardData` + `EvalResult` for the model-index) and a Markdown body are read from the
folder written by `finetune/train.py` (interface 3): `config.json` (labels, stuff labels),
`training_config.yaml` (recipe), `all_results.json` (metrics) and `train_results.json` (start point,
hardware, data size, and per stage the epochs trained, early stop, training and evaluation time).
Missing facts are "not recorded", never invented; the limitations are derived from the numbers.
Metrics are shown as fractions in [0, 1], the unit of `all_results.json` and of the training logs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from finetune.config import DEFAULT_THRESHOLD, STAGE_NAMES

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

# Limitations derived from the numbers: a line is added when a figure crosses one of these thresholds.
# They are this card's rules of thumb, not measured cut-offs, and the figure itself is always printed.
# A few hundred images show each class in few scenes, viewpoints and lightings (COCO, which the
# pretrained DETR saw, has ~118 k training images).
FEW_TRAINING_IMAGES = 500
# A gap of 0.05 PQ between things and stuff is large next to the differences between DETR variants
# (R50 vs R101 on COCO panoptic: 0.434 vs 0.451), so the card says which side is weak.
THINGS_STUFF_GAP = 0.05
# PQ = SQ x RQ; with matched segments at SQ ~0.75, PQ 0.1 means RQ ~0.13: most of the class is missed or wrong.
WEAK_CLASS_PQ = 0.1
# DETR R50 reaches PQ 0.434 on COCO panoptic; below 0.3 a reader should not expect its quality.
LOW_OVERALL_PQ = 0.3


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


def base_model_id(started: dict[str, Any] | None) -> str | None:
    """The Hub id the run started from, as recorded by the training run (`train_results.json`).

    The run decided Hub id vs local folder where the path meant something (its own working directory);
    a name alone cannot tell `user/model` from the folder `outputs/run`, so without a record there is no
    base model.
    """
    started = started or {}
    return started.get("name") if started.get("kind") == "hub" else None


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


# What each stage trains (finetune/modeling/stages.py, `freeze_for_stage` and `param_groups`).
STAGE_TRAINS = {
    "detection": "box model (transformer, class and box heads{backbone}); `mask_head` and `bbox_attention` frozen",
    "masks": "mask head (`mask_head`) and the attention that feeds it (`bbox_attention`); the detector "
    "(`model.detr`, backbone included) frozen",
}


def stages_run(training_config: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """The stages that made these weights: those recorded by training, else the configured ones."""
    recorded = facts.get("stages") or {}
    if recorded:
        return [stage for stage in STAGE_NAMES if stage in recorded]
    return list((training_config.get("run") or {}).get("stages") or STAGE_NAMES)


def _stage_lines(training_config: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """One line per stage trained, with the epochs really trained and the learning rates actually used:
    the masks stage trains the mask head and `bbox_attention`, and a `backbone_lr` of 0 freezes the
    backbone (no backbone lr to report then)."""
    records = facts.get("stages") or {}
    lines = []
    for number, stage in enumerate(stages_run(training_config, facts), start=1):
        section = training_config.get(stage) or {}
        record = records.get(stage)
        backbone_lr = section.get("backbone_lr")
        backbone_trained = stage == "detection" and isinstance(backbone_lr, int | float) and backbone_lr > 0
        trained = record.get("epochs") if record else None
        facts_ = [
            _epochs_text(section, record),
            f"batch size {section['batch_size']}" if "batch_size" in section else None,
            _lr_text(section, trained) if isinstance(section.get("lr"), int | float) else None,
            f"backbone lr {backbone_lr:g}" if backbone_trained else None,
            f"weight decay {section['weight_decay']:g}"
            if isinstance(section.get("weight_decay"), int | float)
            else None,
            f"gradient clip {section['max_grad_norm']}" if section.get("max_grad_norm") is not None else None,
        ]
        if stage == "detection":
            backbone = ", backbone" if backbone_trained else "; backbone frozen"
            description = STAGE_TRAINS[stage].format(backbone=backbone)
        else:
            description = STAGE_TRAINS.get(stage, stage)
        lines.append(f"- Stage {number}, **{stage}** — {description}: " + ", ".join(f for f in facts_ if f) + ".")
    return lines


def _epochs_text(section: dict[str, Any], record: dict[str, Any] | None) -> str | None:
    """`12 of 50 epochs (early stopping)` / `50 epochs` from the run's record; the configured number, said to
    be only that, for a folder without one."""
    if record and isinstance(record.get("epochs"), int):
        planned = record.get("planned_epochs")
        text = _count(record["epochs"], "epoch")
        if isinstance(planned, int) and planned != record["epochs"]:
            text = f"{record['epochs']} of {_count(planned, 'epoch')}"
        return text + (" (early stopping)" if record.get("stopped_early") else "")
    if isinstance(section.get("epochs"), int):
        return f"{_count(section['epochs'], 'epoch')} configured (epochs trained not recorded)"
    return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _lr_text(section: dict[str, Any], trained_epochs: int | None) -> str:
    """`lr 0.001 (×0.1 after epoch 40)`: the StepLR schedule of `finetune/training/loop.py`, which multiplies
    the lr by `lr_gamma` every `lr_drop_epochs` epochs; only the drops the epochs trained reached are named
    (all those the configured epochs would reach when the epochs trained are not recorded)."""
    text = f"lr {section['lr']:g}"
    gamma, planned = section.get("lr_gamma"), section.get("epochs")
    if not (isinstance(gamma, int | float) and gamma < 1 and isinstance(planned, int)):
        return text
    step = section.get("lr_drop_epochs") or max(1, math.ceil(planned * 2 / 3))
    epochs = trained_epochs if isinstance(trained_epochs, int) else planned
    drops = list(range(step, epochs, step))  # the lr changes after epoch m when epoch m + 1 was trained
    if drops:
        text += f" (×{gamma:g} after epoch{'s' if len(drops) > 1 else ''} {', '.join(map(str, drops))})"
    elif isinstance(trained_epochs, int) and step < planned:
        text += f" (constant: the ×{gamma:g} drop after epoch {step} was not reached)"
    return text


def started_from(training_config: dict[str, Any], train_facts: dict[str, Any]) -> str:
    """`the Hub checkpoint X` / `the local checkpoint X` / `a random initialisation (...)`, as recorded by
    training; a folder without the record names the checkpoint without claiming which it was."""
    model = training_config.get("model") or {}
    recorded = train_facts.get("started_from") or {}
    name = recorded.get("name", model.get("model_name_or_path"))
    kind = recorded.get("kind")
    if name is None:
        overrides = recorded.get("config_overrides") or model.get("config_overrides") or {}
        keys = ("backbone", "d_model", "encoder_layers", "decoder_layers", "num_queries")
        described = ", ".join(f"{k} {overrides[k]}" for k in keys if k in overrides)
        return "a random initialisation (no pretrained weights" + (f"; DetrConfig {described})" if described else ")")
    if kind == "hub":
        return f"the Hub checkpoint [`{name}`](https://huggingface.co/{name})"
    if kind == "local":
        return f"the local checkpoint `{name}`"
    return f"the checkpoint `{name}` (Hub id or local folder: not recorded)"


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
        train_facts: Parsed `train_results.json` (start point, hardware, data size, per stage the epochs
            trained, early stop, training and evaluation time); None = the facts are "not recorded" (older
            folders: `hardware` / `train_runtime` in `results` are used).

    Returns:
        A `ModelCard` whose metadata has ``library_name: transformers``, ``pipeline_tag:
        image-segmentation``, license, base model, datasets, tags and the model-index results.
    """
    facts = _facts(results, train_facts or {})
    base = base_model_id(facts["started_from"])
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
    """The run's facts: `train_results.json`, else the keys older folders kept in `all_results.json`.

    `stages` holds the per-stage records; `stage_runtime` (older `train_results.json`) only the wall time
    of each stage with its evaluations, labelled as such by `_training_time`.
    """
    runtime = train_facts.get("train_runtime", _first(results, RUNTIME_KEYS))
    return {
        "started_from": train_facts.get("started_from"),
        "hardware": train_facts.get("hardware", _first(results, HARDWARE_KEYS)),
        "num_processes": train_facts.get("num_processes", results.get("num_processes")),
        "mixed_precision": train_facts.get("mixed_precision"),
        "stages": train_facts.get("stages") or {},
        "stage_runtime": train_facts.get("stage_runtime") or {},
        "train_runtime": runtime,
        "eval_runtime": train_facts.get("eval_runtime"),
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
{_stages_sentence(stages_run(training_config, facts))}"""


def _stages_sentence(stages: list[str]) -> str:
    """What the stages that ran did, in words (the intro's last sentence)."""
    if stages == ["detection", "masks"]:
        return "in two stages: the box model first, then the mask head with the detector frozen."
    if stages == ["detection"]:
        return ("in one stage, `detection`: the box model only; the mask head was not trained (its weights "
                "are those of the start point).")
    if stages == ["masks"]:
        return "in one stage, `masks`: the mask head only, on the start point's detector, kept frozen."
    return "in the stages " + ", ".join(f"`{stage}`" for stage in stages) + "."


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
        *_stage_lines(training_config, facts),
    ]
    if data.get("train_scales"):
        scales = data["train_scales"]
        lines.append(
            f"- Augmentation: multi-scale shortest edge {min(scales)}–{max(scales)} px (max {data.get('max_size')}), "
            f"horizontal flip p={data.get('hflip_prob')}, random crop {'on' if data.get('random_crop') else 'off'}; "
            f"evaluation at shortest edge {data.get('eval_size')} px"
        )
    lines.append(f"- Hardware: {_hardware(facts, run)}")
    lines.append(f"- Time: {_training_time(facts)}")
    lines.append(f"- Seed: {run.get('seed', 'not recorded')}")
    return f"""## Training recipe

{chr(10).join(lines)}

The full configuration is in `training_config.yaml`, the final metrics in `all_results.json`, the run's
facts (hardware, epochs and time per stage) in `train_results.json` when recorded."""


def _hardware(facts: dict[str, Any], run: dict[str, Any]) -> str:
    if not facts.get("hardware"):
        return "not recorded"
    count = facts.get("num_processes")
    precision = facts.get("mixed_precision") or run.get("mixed_precision")
    text = str(facts["hardware"]) + (f" × {count} process(es)" if count else "")
    return text + (f", mixed precision {precision}" if precision else "")


def _training_time(facts: dict[str, Any]) -> str:
    """Training and evaluation wall time, each labelled, per stage; older records (one figure per stage,
    evaluation included) and older folders (one total) say what they hold."""
    records = facts.get("stages") or {}
    if records and all(isinstance(r.get("train_seconds"), int | float) for r in records.values()):
        train = sum(r["train_seconds"] for r in records.values())
        evaluation = sum(r.get("eval_seconds") or 0.0 for r in records.values())
        per_stage = "; ".join(
            f"{stage} {_duration(r['train_seconds'])} + {_duration(r.get('eval_seconds') or 0.0)}"
            for stage, r in records.items()
        )
        return (
            f"{_duration(train)} training + {_duration(evaluation)} evaluation ({per_stage}); wall-clock summed "
            "over resumes, checkpoint writing not included, and the part of an epoch redone after an "
            "interruption counted once"
        )
    if facts.get("train_runtime") is None:
        return "not recorded"
    per_stage = ", ".join(f"{stage} {_duration(sec)}" for stage, sec in facts["stage_runtime"].items())
    return f"{_duration(facts['train_runtime'])} of training, evaluation included" + (
        f" ({per_stage})" if per_stage else ""
    )


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
    elif isinstance(n_train, int) and n_train < FEW_TRAINING_IMAGES:
        lines.append(f"- Fine-tuned on only {n_train} images: expect poor results on scenes unlike them.")
    things, stuff = results.get("pq_things"), results.get("pq_stuff")
    if isinstance(things, int | float) and isinstance(stuff, int | float) and abs(things - stuff) >= THINGS_STUFF_GAP:
        worse, better = ("things", "stuff") if things < stuff else ("stuff", "things")
        low, high = sorted((things, stuff))
        lines.append(f"- {worse.title()} are segmented much worse than {better}: PQ {worse} {low:.3f} "
                     f"vs PQ {better} {high:.3f}.")
    weak = sorted((pq, name) for name, pq in (results.get("per_class_pq") or {}).items() if pq < WEAK_CLASS_PQ)
    if weak:
        names = ", ".join(f"{name} ({pq:.2f})" for pq, name in weak)
        lines.append(f"- Classes with PQ below {WEAK_CLASS_PQ:g}, mostly missed or wrong: {names}.")
    if isinstance(results.get("pq"), int | float) and results["pq"] < LOW_OVERALL_PQ:
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
    weights = "int8 (static quantization, calibrated on photos)" if manifest.get("quantize") == "int8" else "fp32"
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
