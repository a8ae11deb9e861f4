"""What a conversion produced and what it had to skip: ``report.json`` and the printed table.

Every warning names the annotation file, the image and the annotation id so that it can be
fixed in CVAT. Per class the report gives the number of segments and images and the area
percentiles (p5/p50/p95, in pixels) of its segments.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Warning codes (stable strings: tests and users grep for them).
BOX_ONLY = "box_only"
TAG = "image_tag"
UNSUPPORTED = "unsupported_shape"
DEGENERATE = "degenerate_polygon"
OUT_OF_BOUNDS = "out_of_bounds"
EMPTY = "empty_mask"
INVISIBLE = "invisible_segment"
MISSING_IMAGE = "missing_image"
UNUSED_LABEL = "unused_label"
NOT_IN_VAL = "class_not_in_val"
UNANNOTATED = "unannotated_image"
RENAMED = "renamed_image"
EMPTY_LABEL = "empty_label"
# Order of the printed warnings: problems of single annotations first, then images, then labels.
DISPLAY_ORDER = (
    INVISIBLE,
    OUT_OF_BOUNDS,
    DEGENERATE,
    EMPTY,
    UNSUPPORTED,
    EMPTY_LABEL,
    BOX_ONLY,
    TAG,
    MISSING_IMAGE,
    UNANNOTATED,
    RENAMED,
    NOT_IN_VAL,
    UNUSED_LABEL,
)


@dataclass(frozen=True)
class ReportWarning:
    """One skipped or repaired thing.

    Attributes:
        code: One of the codes above.
        file: Annotation file (or image file for image problems).
        image: Image file name ('' when not about one image).
        annotation_id: Annotation id(s) in ``file`` ('' when not about an annotation).
        message: Human-readable explanation.
    """

    code: str
    file: str
    image: str
    annotation_id: str
    message: str

    def line(self) -> str:
        where = ", ".join(
            part
            for part in (
                self.file,
                f"image {self.image}" if self.image else "",
                self.annotation_id and f"annotation {self.annotation_id}",
            )
            if part
        )
        return f"[{self.code}] {where}: {self.message}"


@dataclass
class ClassStats:
    """Per-class counters, filled segment by segment."""

    name: str
    isthing: bool
    areas: list[int] = field(default_factory=list)
    images: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        p5, p50, p95 = (
            (int(round(v)) for v in np.percentile(self.areas, [5, 50, 95])) if self.areas else (0, 0, 0)
        )
        return {
            "name": self.name,
            "isthing": self.isthing,
            "segments": len(self.areas),
            "images": len(self.images),
            "area_p5": p5,
            "area_p50": p50,
            "area_p95": p95,
        }


@dataclass
class ConversionReport:
    """The outcome of `convert_exports`.

    Attributes:
        out_dir: The written COCO-panoptic folder.
        exports: Annotation files read.
        categories: The output categories (id, name, isthing, color, supercategory).
        splits: Images per split.
        warnings: Everything skipped or repaired.
        classes: Per-class statistics, keyed by category id.
        renamed: Output file name of every picture written under another name than its path in
            the export (folders flattened; ``cam1/0001.jpg`` -> ``cam1__0001.jpg`` when another
            picture is also called ``0001``).
        split_method: How the splits were made (random, CVAT subsets, video frame ranges).
    """

    out_dir: str
    exports: list[str]
    categories: list[dict[str, Any]]
    splits: dict[str, int] = field(default_factory=dict)
    warnings: list[ReportWarning] = field(default_factory=list)
    classes: dict[int, ClassStats] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    split_method: str = ""

    def add_segments(self, image: str, segments_info: list[dict[str, Any]]) -> None:
        for seg in segments_info:
            stats = self.classes[seg["category_id"]]
            stats.areas.append(int(seg["area"]))
            stats.images.add(image)

    def warning_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(w.code for w in self.warnings).items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "exports": self.exports,
            "images": sum(self.splits.values()),
            "splits": self.splits,
            "split_method": self.split_method,
            "classes": [self.classes[cat["id"]].summary() for cat in self.categories],
            "warning_counts": self.warning_counts(),
            "warnings": [asdict(w) for w in self.warnings],
            "renamed_images": dict(sorted(self.renamed.items())),
        }

    def format_table(self, max_warnings: int = 20) -> str:
        """The printed summary: one row per class, then the warnings (first `max_warnings`)."""
        rows = [self.classes[cat["id"]].summary() for cat in self.categories]
        width = max([len("class"), *(len(r["name"]) for r in rows)])
        header = f"{'class':<{width}}  kind   segments  images  area_p5  area_p50  area_p95"
        lines = [header, "-" * len(header)]
        for r in rows:
            kind = "thing" if r["isthing"] else "stuff"
            lines.append(
                f"{r['name']:<{width}}  {kind:<5}  {r['segments']:>8}  {r['images']:>6}  "
                f"{r['area_p5']:>7}  {r['area_p50']:>8}  {r['area_p95']:>8}"
            )
        split_text = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        lines.append(f"images: {sum(self.splits.values())} ({split_text})")
        if self.split_method:
            lines.append(f"split: {self.split_method}")
        counts = self.warning_counts()
        lines.append(
            "warnings: " + (", ".join(f"{code} {n}" for code, n in counts.items()) if counts else "none")
        )
        rank = {code: i for i, code in enumerate(DISPLAY_ORDER)}
        shown = sorted(self.warnings, key=lambda w: rank.get(w.code, len(rank)))
        for warning in shown[:max_warnings]:
            lines.append("  " + warning.line())
        if len(self.warnings) > max_warnings:
            lines.append(f"  ... {len(self.warnings) - max_warnings} more in report.json")
        return "\n".join(lines)

