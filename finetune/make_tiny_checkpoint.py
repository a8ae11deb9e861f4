"""Make the tiny pretrained panoptic checkpoint shipped in `pretrained/tiny-detr-panoptic/`.

    python finetune/make_tiny_checkpoint.py [--out pretrained/tiny-detr-panoptic] [--num-images 600]
        [--work-dir outputs/tiny_pretrain] [-- more finetune/train.py options]

The offline stand-in for `facebook/detr-resnet-50-panoptic`: the same recipe, in miniature.

1. Generate the synthetic *source* domain (`dataset_scripts/sample/source_domain.py`): 192x144
   construction scenes with brick, excavator and pole (the sample's pipe, renamed) things and
   COCO-named stuff (sky-other-merged, wall-other-merged, floor-other-merged, dirt-merged); the
   bundled sample's tile is absent.
2. Train it from scratch with the real training path, `accelerate launch finetune/train.py --config
   finetune/configs/tiny_pretrain.yaml` (both stages), into `WORK_DIR/run/`.
3. Export `run/final/` as a model folder: weights stored in float16 (`config.json` says float32, so
   `from_pretrained` and `pipeline` load float32), the image processor, the source-val metrics and a
   model card (`README.md`).

Options after `--` go to `finetune/train.py` (e.g. `-- --detection_epochs 1 --masks_epochs 1`: what
the test runs to check that the script works).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

try:  # run as a file (`python finetune/make_tiny_checkpoint.py`), this needs the project installed: one line says so
    import finetune  # noqa: F401
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e .` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

import yaml
from safetensors.torch import load_file, save_file

from dataset_scripts.atomic_io import atomic_directory
from dataset_scripts.sample.source_domain import (
    SAMPLE_CLASS_MAP,
    SOURCE_NAMES,
    SOURCE_SIZE,
    SOURCE_STUFF_LABELS,
    source_domain_plans,
)
from dataset_scripts.sample.synthetic_set import build_panoptic_set
from finetune.training.launch_run import REPO_ROOT, launch_training

logger = logging.getLogger("finetune.make_tiny_checkpoint")

DEFAULT_OUT = REPO_ROOT / "pretrained" / "tiny-detr-panoptic"
DEFAULT_CONFIG = REPO_ROOT / "finetune" / "configs" / "tiny_pretrain.yaml"
COPIED_FILES = ("preprocessor_config.json", "all_results.json")
TRAINING_CONFIG = "training_config.yaml"
# The shipped checkpoint's source set: `source_domain_plans(NUM_IMAGES, seed=SEED)`, NUM_VAL of them in val
# (tests/test_seed_ranges.py checks that no target set or sample scene is one of them).
NUM_IMAGES, NUM_VAL, SEED = 600, 40, 0


def portable_training_config(text: str, work_dir: Path) -> str:
    """The run's `training_config.yaml` without the paths of the machine it ran on.

    `data.dataset_dir` and `run.output_dir` lie in the pretraining's `--work-dir` (a temporary folder,
    typically): they are written relative to it, and a first comment line says so.

    Args:
        text: The run's `training_config.yaml`.
        work_dir: `--work-dir` of the pretraining.

    Raises:
        ValueError: one of them lies outside `work_dir` (it would still name a folder of that machine).
    """
    config = yaml.safe_load(text)
    for section, key in (("data", "dataset_dir"), ("run", "output_dir")):
        value = config[section][key]
        if value is None:
            continue
        path = Path(value)
        if not path.is_absolute():
            path = Path.cwd() / path  # as the training run resolved it
        try:
            config[section][key] = path.resolve().relative_to(Path(work_dir).resolve()).as_posix()
        except ValueError:
            raise ValueError(f"{TRAINING_CONFIG}: {section}.{key} {value} is not inside --work-dir {work_dir}") from None
    header = "# data.dataset_dir and run.output_dir: relative to make_tiny_checkpoint.py's --work-dir\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def export_checkpoint(final_dir: Path, out_dir: Path, card: str, work_dir: Path) -> Path:
    """Write `final_dir` as the shipped folder: float16 weights, float32 `dtype` in config.json, the
    training config without machine paths (`portable_training_config`), a card."""
    training_config = portable_training_config(
        (final_dir / TRAINING_CONFIG).read_text(encoding="utf-8"), work_dir
    )
    with atomic_directory(out_dir, overwrite=True) as tmp:
        tmp.chmod(0o755)
        config = json.loads((final_dir / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = "float32"  # what from_pretrained / pipeline load the float16 weights as
        (tmp / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        weights = load_file(str(final_dir / "model.safetensors"))
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
        save_file(half, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "model.safetensors").chmod(0o644)  # a data file to share (save_file may write it 0600)
        for name in COPIED_FILES:
            if (final_dir / name).is_file():
                shutil.copy2(final_dir / name, tmp / name)
        (tmp / TRAINING_CONFIG).write_text(training_config, encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out_dir


def model_card(
    results: dict[str, Any], num_images: int, command: str, minutes: float, scene_seeds: tuple[int, int]
) -> str:
    """The checkpoint's README.md: what it is, its classes, how it was made, its source-val metrics.

    Args:
        results: The run's `all_results.json`.
        num_images: Source scenes generated.
        command: The command that made it.
        minutes: Wall clock of data and training.
        scene_seeds: First and last scene seed of the source scenes.
    """
    per_class = results.get("per_class_pq", {})
    rows = "\n".join(f"| {name} | {pq:.3f} |" for name, pq in per_class.items())
    stuff = ", ".join(f"`{v}`" for v in SOURCE_STUFF_LABELS)
    mapping = ", ".join(f"{k}: {v}" for k, v in SAMPLE_CLASS_MAP.items())
    return f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [detr, panoptic-segmentation, tiny, synthetic]
---
# tiny-detr-panoptic

A tiny `DetrForSegmentation` (timm resnet10t backbone with DC5, d_model 64, 1 encoder / 2 decoder
layers, 10 queries; 5.2 M parameters, stored in float16, loaded as float32) pretrained on a
synthetic *source* domain. It is the offline stand-in for `facebook/detr-resnet-50-panoptic` in
this project: `finetune/configs/quickstart.yaml` fine-tunes it on the bundled CVAT sample with the
real recipe (class-head warm start, box stage, then the mask head with DETR frozen).

Not a useful model outside this project: it has only seen procedurally drawn scenes.

## Classes
Things `brick`, `excavator`, `pole`; stuff {stuff}. Onto the bundled sample's classes:
brick and excavator by name, the rest with `class_map: {{{mapping}}}`; the sample's `tile` is a new
class for it.

## How it was made
`{command}` generated {num_images} source scenes of {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} px
(`dataset_scripts/sample/source_domain.py`; scene seeds {scene_seeds[0]}-{scene_seeds[1]}, in the pretraining
range of `dataset_scripts/sample/seeds.py`, from which no bench target set and not the bundled sample
draw) and ran `accelerate launch finetune/train.py --config finetune/configs/tiny_pretrain.yaml` on them
(its copy: `training_config.yaml`, paths relative to the `--work-dir`), from a random init: box stage
(the random, calibrated backbone's layer2-4 at lr 2e-5), then mask stage with DETR frozen;
{minutes:.1f} min wall clock with the data, one thread per process.

## Source-domain validation metrics (`all_results.json`)
PQ {results.get("pq", float("nan")):.3f} (things {results.get("pq_things", float("nan")):.3f}, stuff
{results.get("pq_stuff", float("nan")):.3f}), box mAP {results.get("box_map", float("nan")):.3f}.

| class | PQ |
|---|---|
{rows}

## Use
```python
from transformers import pipeline
segments = pipeline("image-segmentation", model="pretrained/tiny-detr-panoptic")("scene.jpg")
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the checkpoint folder to write")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "outputs" / "tiny_pretrain")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the pretraining config")
    parser.add_argument("--num-images", type=int, default=NUM_IMAGES, help="source scenes (train + val)")
    parser.add_argument("--num-val", type=int, default=NUM_VAL, help="source scenes in val")
    parser.add_argument("--seed", type=int, default=SEED, help="scene and split seed")
    parser.add_argument("train_args", nargs="*", help="after --: finetune/train.py options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dataset_scripts").setLevel(logging.WARNING)

    started = time.monotonic()
    plans = source_domain_plans(args.num_images, seed=args.seed)
    data_dir = args.work_dir / f"source_{args.num_images}_{args.num_val}_seed{args.seed}"
    panoptic = build_panoptic_set(
        data_dir, plans, SOURCE_STUFF_LABELS, args.num_val, seed=args.seed, rename=SOURCE_NAMES
    )
    run_dir = args.work_dir / "run"
    results = launch_training(args.config, run_dir, ["--dataset_dir", str(panoptic), *args.train_args])
    command = "python finetune/make_tiny_checkpoint.py" + (
        f" --num-images {args.num_images}" if args.num_images != NUM_IMAGES else ""
    )
    minutes = (time.monotonic() - started) / 60
    seeds = sorted(plan.seed for _, images in plans.values() for plan in images)
    card = model_card(results, args.num_images, command, minutes, (seeds[0], seeds[-1]))
    export_checkpoint(run_dir / "final", args.out, card, args.work_dir)
    logger.info(
        "tiny checkpoint written to %s (source val PQ %.3f)", args.out, results.get("pq", float("nan"))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
