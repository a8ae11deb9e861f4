"""Colour overlays of panoptic segmentations, for people to look at.

Used by the converter (previews of converted annotations), by `finetune/predict.py` and
`demo.py` (model predictions). The picture is the photo with every segment blended in its class
colour, a thin outline around each segment, the class name written on every thing instance, and a
legend strip under the photo with a colour swatch and the name of every class present.

Drawing is deterministic: the same inputs give the same pixels (no random colours; segments are
drawn in the order given, the legend lists classes in order of first appearance).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset_scripts.panoptic_format import VOID_ID

LEGEND_BACKGROUND = (250, 250, 250)
LEGEND_TEXT = (20, 20, 20)
LABEL_TEXT = (255, 255, 255)
LABEL_BACKGROUND = (0, 0, 0, 160)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled font (works offline); scalable when Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def distinct_colors(count: int) -> list[list[int]]:
    """``count`` distinct, well-spread RGB colours (golden-ratio hues; same list every run).

    The one palette of the project: the converter colours category ``i`` (in category order) with
    ``distinct_colors(K)[i]``, and a model label without a saved colour gets the same colour
    (`palette_color`), so ground-truth previews and prediction overlays agree. A longer list starts
    with the shorter one.
    """
    colors: list[list[int]] = []
    seen: set[tuple[int, int, int]] = set()
    index = 0
    while len(colors) < count:
        hue = (index * 0.618033988749895) % 1.0
        saturation = (0.85, 0.6, 0.95)[(index // 7) % 3]
        value = (0.95, 0.75, 0.55)[(index // 21) % 3]
        rgb = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if rgb not in seen and rgb != (0, 0, 0):
            seen.add(rgb)  # type: ignore[arg-type]
            colors.append(list(rgb))
        index += 1
    return colors


PALETTE_SIZE = 1024
"""`palette_color` cycles through this many colours (far more than any category table here)."""


@lru_cache(maxsize=1)
def _palette() -> tuple[tuple[int, int, int], ...]:
    return tuple(tuple(c) for c in distinct_colors(PALETTE_SIZE))  # type: ignore[misc]


def palette_color(index: int) -> tuple[int, int, int]:
    """Colour ``index`` of `distinct_colors` (cycling after `PALETTE_SIZE`): class ``index``'s colour."""
    return _palette()[int(index) % PALETTE_SIZE]


def _segment_color(segment: dict[str, Any]) -> tuple[int, int, int]:
    color = segment.get("color")
    if color is None:
        return palette_color(int(segment["id"]))
    return tuple(int(c) for c in color)[:3]  # type: ignore[return-value]


def _instance_color(color: tuple[int, int, int], index: int) -> tuple[int, int, int]:
    """The class colour for the first instance, then lighter/darker variants (golden-ratio steps).

    Things of one class share a colour family, so the legend still names them, while touching
    instances stay distinguishable.
    """
    if index == 0:
        return color
    shift = ((index * 0.618033988749895) % 1.0) * 2.0 - 1.0  # in (-1, 1), never repeats
    target = 255.0 if shift > 0 else 0.0
    amount = 0.25 + 0.3 * abs(shift)
    return tuple(int(round(c + (target - c) * amount)) for c in color)  # type: ignore[return-value]


def _outline(ids: np.ndarray, thickness: int) -> np.ndarray:
    """``(H, W)`` bool: pixels on the border between two different ids."""
    edge = np.zeros(ids.shape, dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]
    vertical = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    if thickness > 1:
        from scipy import ndimage  # imported when drawing: the converter's `--help` stays fast

        edge = ndimage.binary_dilation(edge, iterations=thickness - 1)
    return edge


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of `mask` farthest from its border: always inside the segment."""
    from scipy import ndimage

    rows, cols = np.nonzero(mask)
    top, left = rows.min(), cols.min()
    crop = np.pad(mask[top : rows.max() + 1, left : cols.max() + 1], 1)
    distance = ndimage.distance_transform_edt(crop)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(left + x - 1), int(top + y - 1)


def _instance_colors(segments: Sequence[dict[str, Any]], present: set[int]) -> dict[int, tuple]:
    """Colour of each present segment: its class colour, varied between instances of a thing class."""
    seen: dict[str, int] = {}
    colors = {}
    for seg in segments:
        seg_id = int(seg["id"])
        if seg_id not in present:
            continue
        base = _segment_color(seg)
        if seg.get("isthing", False):
            index = seen.get(seg["name"], 0)
            seen[seg["name"]] = index + 1
            colors[seg_id] = _instance_color(base, index)
        else:
            colors[seg_id] = base
    return colors


def _legend_entries(segments: Sequence[dict[str, Any]], present: set[int]) -> list[tuple[str, tuple]]:
    """(name, colour) of each class present, in order of first appearance, one per name."""
    entries: dict[str, tuple[int, int, int]] = {}
    for seg in segments:
        if int(seg["id"]) in present and seg["name"] not in entries:
            entries[seg["name"]] = _segment_color(seg)
    return list(entries.items())


def _layout_legend(
    entries: list[tuple[str, tuple]], width: int, font_size: int
) -> tuple[list[tuple[int, int, str, tuple]], int]:
    """Place legend entries in rows that fit `width`; returns ((x, y, name, colour)...), height."""
    font = _font(font_size)
    pad = max(4, font_size // 2)
    swatch = font_size
    line_height = font_size + pad
    placed = []
    x, y = pad, pad
    for name, color in entries:
        entry_width = swatch + pad // 2 + int(font.getlength(name))
        if x > pad and x + entry_width > width - pad:
            x, y = pad, y + line_height
        placed.append((x, y, name, color))
        x += entry_width + 2 * pad
    height = y + line_height + pad if entries else 0
    return placed, height


def draw_panoptic_overlay(
    image: Image.Image,
    ids: np.ndarray,
    segments: list[dict[str, Any]],
    alpha: float = 0.5,
) -> Image.Image:
    """Draw a panoptic segmentation over its photo, with outlines, thing names and a legend.

    Args:
        image: The photo, any mode (converted to RGB), size ``(W, H)``.
        ids: ``(H, W)`` integer segment ids; 0 is void and is left untouched.
        segments: One dict per segment: ``id`` (the value in `ids`), ``name`` (class name),
            ``color`` ``(r, g, b)`` (a deterministic colour is chosen when missing or None),
            ``isthing`` (things get their name written on them; stuff is named in the legend
            only). An optional ``score`` is appended to the thing label. Segments absent from
            `ids` are ignored; ids without a segment are left untouched, like void.
        alpha: Opacity of the class colours over the photo, in [0, 1].

    Returns:
        An RGB image of width ``W`` and height ``H + legend height``: the photo with the overlay on
        top, the legend strip (one swatch + name per class present) below. With no segment
        present the legend is omitted and the photo is returned unchanged (as RGB).

    Raises:
        ValueError: `ids` is not ``(H, W)`` of the image, or `alpha` is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = photo.shape[:2]
    ids = np.asarray(ids)
    if ids.shape != (height, width):
        raise ValueError(f"ids has shape {ids.shape} but the image is {width}x{height} (W x H)")

    by_id = {int(seg["id"]): seg for seg in segments if int(seg["id"]) != VOID_ID}
    present = {int(i) for i in np.unique(ids)} & set(by_id)
    canvas = _colour_overlay(photo, ids, segments, present, alpha)
    entries = _legend_entries(segments, present)
    if not entries:
        return canvas
    canvas = _draw_thing_labels(canvas, ids, segments, present)
    return _add_legend(canvas, entries)


def _colour_overlay(
    photo: np.ndarray, ids: np.ndarray, segments: Sequence[dict[str, Any]], present: set[int], alpha: float
) -> Image.Image:
    """The photo with every present segment blended in its colour and outlined."""
    height, width = photo.shape[:2]
    # Colour look-up table over the ids present: blended colour + outline colour per id.
    unique, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    colors = np.zeros((len(unique), 3), dtype=np.float32)
    painted = np.zeros(len(unique), dtype=bool)
    instance_colors = _instance_colors(segments, present)
    for index, seg_id in enumerate(unique.tolist()):
        if seg_id in present:
            colors[index] = instance_colors[seg_id]
            painted[index] = True
    paint = painted[inverse]
    out = photo.copy()
    out[paint] = (1.0 - alpha) * photo[paint] + alpha * colors[inverse][paint]

    # Outlines in the segment's own colour, fully opaque, on the segment's side of each border.
    thickness = max(1, round(min(height, width) / 240))
    edge = _outline(ids, thickness) & paint
    out[edge] = colors[inverse][edge]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def _draw_thing_labels(
    canvas: Image.Image, ids: np.ndarray, segments: Sequence[dict[str, Any]], present: set[int]
) -> Image.Image:
    """Thing names: white text on a translucent dark box at the segment's innermost pixel."""
    width, height = canvas.size
    label_size = max(10, round(min(height, width) / 28))
    font = _font(label_size)
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    texts = []
    for seg in segments:
        seg_id = int(seg["id"])
        if seg_id not in present or not seg.get("isthing", False):
            continue
        text = str(seg["name"])
        if seg.get("score") is not None:
            text += f" {float(seg['score']):.2f}"
        x, y = _label_anchor(ids == seg_id)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor="mm")
        # Keep the label inside the photo.
        dx = max(0, -left + 1) - max(0, right - width + 1)
        dy = max(0, -top + 1) - max(0, bottom - height + 1)
        box = (left + dx - 2, top + dy - 2, right + dx + 2, bottom + dy + 2)
        draw.rectangle(box, fill=LABEL_BACKGROUND)
        texts.append(((x + dx, y + dy), text))
    for xy, text in texts:
        draw.text(xy, text, font=font, fill=(*LABEL_TEXT, 255), anchor="mm")
    return Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")


def _add_legend(canvas: Image.Image, entries: list[tuple[str, tuple]]) -> Image.Image:
    """The canvas with the legend strip (one swatch + name per class) below it."""
    width, height = canvas.size
    legend_size = max(11, round(width / 60))
    placed, legend_height = _layout_legend(entries, width, legend_size)
    result = Image.new("RGB", (width, height + legend_height), LEGEND_BACKGROUND)
    result.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(result)
    legend_font = _font(legend_size)
    pad = max(4, legend_size // 2)
    for x, y, name, color in placed:
        y0 = height + y
        draw.rectangle((x, y0, x + legend_size - 1, y0 + legend_size - 1), fill=color, outline=LEGEND_TEXT)
        draw.text(
            (x + legend_size + pad // 2, y0 + legend_size // 2),
            name,
            font=legend_font,
            fill=LEGEND_TEXT,
            anchor="lm",
        )
    return result


def side_by_side(panels: Sequence[tuple[str, Image.Image]], min_width: int = 480) -> Image.Image:
    """Pictures next to each other, each under its title, scaled up to a readable width.

    Args:
        panels: ``(title, picture)`` pairs, drawn left to right (e.g. ground truth | prediction).
        min_width: A panel narrower than this is enlarged (nearest neighbour, so segment borders
            stay sharp) to at least this width.

    Returns:
        One RGB image: a white title strip above each panel, panels separated by a white gutter.
    """
    scale = max(1, -(-min_width // max(picture.width for _, picture in panels)))
    scaled = [
        picture.convert("RGB").resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        for _, picture in panels
    ]
    title_size = max(14, scaled[0].width // 28)
    strip, gutter = title_size + 12, 8
    width = sum(p.width for p in scaled) + gutter * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, strip + max(p.height for p in scaled)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (title, _), picture in zip(panels, scaled, strict=True):
        draw.text((x + 6, 6), title, fill=(0, 0, 0), font=_font(title_size))
        canvas.paste(picture, (x, strip))
        x += picture.width + gutter
    return canvas
