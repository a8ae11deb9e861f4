"""COCO-panoptic category identity: the 133 categories, and a checkpoint's class-head rows resolved to them.

A checkpoint's label *names* cannot be trusted to be COCO-panoptic names. `facebook/detr-resnet-50-panoptic`
(converted by transformers 4.x in 2021) has 250 rows, one per COCO category id: its `id2label` names rows
0-182 with COCO-Stuff names (`person`, `snow`, `wall-brick`, but also `wall-other`, `floor-other`...: COCO-Stuff
classes that COCO panoptic merged away, so the model never predicts them) and calls the merged panoptic classes
184-200 (`tree-merged` ... `rug-merged`: the wall, floor, ground and sky of a construction site) `LABEL_184` ...
`LABEL_200`. Identity therefore goes by COCO-panoptic category *id*, through the table shipped in
`configs/coco_panoptic_categories.json`.

That table is panopticapi's `panoptic_coco_categories.json` (github.com/cocodataset/panopticapi; id, name,
isthing and supercategory kept, colours dropped): COCO panoptic annotation metadata of the COCO Consortium,
licensed CC BY 4.0 (cocodataset.org/#termsofuse).

`CheckpointLabels.from_id2label` resolves a checkpoint's rows: a checkpoint laid out by COCO category id (more
than 200 rows, none of its COCO-panoptic names on another row) gets each row that is a COCO-panoptic id named
by the table, whatever its own name, and its other rows (`N/A`, COCO-Stuff-only classes) are never matched;
any other checkpoint (ours: rows 0..K-1 named after the dataset's classes) keeps its own names. References in
the user's files (a `class_map` value, a stuff-mapping key) may be a COCO-panoptic name or its id.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATEGORIES_PATH = Path(__file__).resolve().parent / "configs" / "coco_panoptic_categories.json"


@dataclass(frozen=True)
class CocoPanopticCategory:
    """One COCO-panoptic category (panopticapi's `panoptic_coco_categories.json`)."""

    id: int
    name: str
    isthing: bool
    supercategory: str


@cache
def coco_panoptic_categories() -> dict[int, CocoPanopticCategory]:
    """The 133 COCO-panoptic categories (80 things, 53 stuff) by id (1..200, with gaps)."""
    rows = json.loads(CATEGORIES_PATH.read_text(encoding="utf-8"))
    return {
        int(r["id"]): CocoPanopticCategory(int(r["id"]), r["name"], bool(r["isthing"]), r["supercategory"])
        for r in rows
    }


@cache
def _ids_by_name() -> dict[str, int]:
    return {category.name: category_id for category_id, category in coco_panoptic_categories().items()}


def coco_panoptic_name(reference: str | int) -> str | None:
    """The COCO-panoptic name of a reference: a category id (int or digits) or a name; None if neither."""
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int) or (isinstance(reference, str) and reference.strip().isdigit()):
        category = coco_panoptic_categories().get(int(reference))
        return None if category is None else category.name
    return reference if reference in _ids_by_name() else None


@dataclass(frozen=True)
class CheckpointLabels:
    """A checkpoint's class-head rows under the names they are matched by.

    Attributes:
        names: row -> display name: the COCO-panoptic name where the row resolves to one, else the
            checkpoint's own label name (every row, for logs and predictions).
        rows: name -> row for the rows a reference may match (the first row of a repeated name). In a
            COCO-id layout, the COCO-panoptic categories only.
        coco_layout: whether rows are COCO category ids (`facebook/detr-resnet-50-panoptic`).
    """

    names: dict[int, str]
    rows: dict[str, int]
    coco_layout: bool

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str]) -> CheckpointLabels:
        """Resolve a checkpoint's `config.id2label` (int or str keys) through the COCO-panoptic table."""
        raw = {int(row): str(name) for row, name in id2label.items()}
        table, ids = coco_panoptic_categories(), _ids_by_name()
        coco_layout = len(raw) > max(table) and all(row == ids[name] for row, name in raw.items() if name in ids)
        if coco_layout:
            names = {row: table[row].name if row in table else name for row, name in raw.items()}
            rows = {table[row].name: row for row in sorted(raw) if row in table}
        else:
            names, rows = raw, {}
            for row in sorted(raw):
                rows.setdefault(raw[row], row)
        return cls(names=names, rows=rows, coco_layout=coco_layout)

    def row_of(self, reference: str | int) -> int | None:
        """The row a reference (a label name, or a COCO-panoptic name or id) designates; None if none."""
        if isinstance(reference, str) and reference in self.rows:
            return self.rows[reference]
        name = coco_panoptic_name(reference)
        return None if name is None else self.rows.get(name)

    def close_matches(self, reference: str | int, n: int = 3) -> list[str]:
        """Names of matchable rows that resemble `reference` (never a row the model cannot predict).

        Names that extend the reference come first: COCO panoptic merged `wall-other` into `wall-other-merged`.
        """
        reference = str(reference)
        extending = sorted(name for name in self.rows if name.startswith(reference) and name != reference)
        similar = difflib.get_close_matches(reference, list(self.rows), n=n)
        return list(dict.fromkeys(extending + similar))[:n]
