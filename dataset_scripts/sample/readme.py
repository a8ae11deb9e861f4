"""The ``README.md`` of a generated sample: how to regenerate it, per-export counts, its quirks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _per_class_images(docs: dict[str, dict]) -> dict[str, set[str]]:
    """``{category name: file names of the images holding it}`` over every export."""
    per_class: dict[str, set[str]] = {}
    for doc in docs.values():
        cat_names = {c["id"]: c["name"] for c in doc["categories"]}
        file_of = {im["id"]: im["file_name"] for im in doc["images"]}
        for ann in doc["annotations"]:
            per_class.setdefault(cat_names[ann["category_id"]], set()).add(file_of[ann["image_id"]])
    return per_class


def sample_readme(out_dir: Path, command: str, docs: dict[str, dict], quirks: Sequence[str]) -> str:
    """The README text.

    Args:
        out_dir: The written sample (its file sizes are summed).
        command: The command that regenerates it.
        docs: ``{export name: CVAT COCO document}``.
        quirks: One Markdown bullet each.
    """
    lines = [
        "# Bundled CVAT sample (generated)",
        "",
        "Procedural construction-scene photos with CVAT COCO 1.0 annotations, made by",
        "`dataset_scripts/make_sample.py`. Regenerate it (byte-identical for the same seed) with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| export | images | annotations | categories (id=name) |",
        "|---|---|---|---|",
    ]
    for name, doc in docs.items():
        cats = ", ".join(f"{c['id']}={c['name']}" for c in doc["categories"])
        lines.append(f"| `{name}` | {len(doc['images'])} | {len(doc['annotations'])} | {cats} |")
    per_class = _per_class_images(docs)
    unique = {im["file_name"] for doc in docs.values() for im in doc["images"]}
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    lines += [
        "",
        f"{len(unique)} distinct images, {total / 1e6:.2f} MB in all. Images per class: "
        + ", ".join(f"{k} {len(v)}" for k, v in sorted(per_class.items()))
        + ".",
        "",
        "## Quirks (on purpose: real CVAT exports have them)",
        "",
        *[f"- {q}" for q in quirks],
        "",
    ]
    return "\n".join(lines)
