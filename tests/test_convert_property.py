"""Property: whatever the export, the converter writes a valid panoptic folder or refuses in one line.

Hypothesis builds random COCO / XML exports (of a task or of a project with ``Train``/``Test``
subsets, and "CVAT for video" track exports; ellipses among the XML shapes) with random defects (bad coordinates, bad RLE, wrong
value types, unknown ids, duplicate pictures, same base names in two folders, missing, corrupt,
resized or 16-bit pictures, ...). For each, ``main()`` runs in this process and must either

* exit 0 with a folder where the PNG ids equal the JSON ids, areas and boxes are exact,
  panopticapi scores every split 1.0 against itself, and every picture with a mask annotation is
  written once, with its own pixels (nothing merged or dropped); or
* exit 2 with exactly one ``error:`` line and nothing left on disk;

never an exception, a hang or a half-written folder. A few examples go through a subprocess for
the real exit status.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from dataset_scripts.cvat_to_panoptic import main
from tests.export_builders import check_panoptic_folder, no_output_left
from tests.panoptic_checks import pq_against_itself

REPO = Path(__file__).resolve().parents[1]
NAMES = ["x.png", "a/x.png", "b/x.png", "X.png", "y.png", "a/y.png", "../up/z.png"]


def categories() -> list[dict]:
    """A fresh category list per document (mutations must not leak into the next example)."""
    return [{"id": 1, "name": "car"}, {"id": 2, "name": "road"}]


DEFAULT_NAMES = ["x.png", "a/x.png", "b/X.png"]  # same base names in two folders: the usual case here
PICTURE_STATES = ["gray16", "gray16", "wrong_size", "corrupt", "missing"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Spec:
    """One generated export: the files to write and what the converter must keep."""

    layout: str
    images: list[dict] = field(default_factory=list)  # id, name, width, height, picture, shapes
    stuff: bool = False
    overlap: str = "area"
    mutation: tuple[int, object] | None = None  # (where, new value): one random value replaced


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
xml_values = st.sampled_from(["", "abc", "-1", "0", "1e400", "nan", "99999999999", "1,2,3", "1;2", "&amp;"])


def _mutate_json(doc: object, where: int, value: object) -> None:
    """Replace the ``where``-th (modulo) value of a JSON document, in place."""
    slots = []

    def walk(node: object) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in list(items):
            slots.append((node, key))
            walk(child)

    walk(doc)
    if slots:
        node, key = slots[where % len(slots)]
        node[key] = value


def _mutate_xml(text: str, where: int, value: str) -> str:
    """Replace the ``where``-th (modulo) attribute value of an XML text."""
    matches = list(re.finditer(r'="([^"]*)"', text))
    if not matches:
        return text
    match = matches[where % len(matches)]
    return text[: match.start(1)] + value + text[match.end(1) :]


def rarely(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 12) -> st.SearchStrategy:
    """``rare`` about once in ``one_in`` draws, else ``common`` (defects must not hide the happy path)."""
    # The rare branch is a middle value: Hypothesis favours the ends of a range when generating
    # and shrinks towards its start (the common branch).
    return st.integers(0, one_in - 1).flatmap(lambda n: rare if n == one_in // 2 else common)


coordinate = rarely(
    st.one_of(st.integers(-2, 12), st.floats(-2, 12, allow_nan=False)),
    st.sampled_from([1e12, -1e12, 2e8, -3e5, float("nan"), float("inf")]),
    one_in=40,
)


@st.composite
def coco_shape(draw, width: int, height: int) -> dict:
    kind = draw(st.sampled_from(["polygon", "polygon", "polygon", "flat", "rle_list", "rle_string", "box"]))
    shape: dict = {
        "category_id": draw(
            rarely(st.sampled_from([1, 2]), st.sampled_from([[1], "1", None, 99]), one_in=60)
        ),
        "image_offset": draw(rarely(st.just(0), st.sampled_from([1, 99]), one_in=60)),
    }
    if kind in ("polygon", "flat"):
        points = draw(
            st.lists(coordinate, min_size=draw(rarely(st.just(6), st.integers(0, 5), one_in=20)), max_size=12)
        )
        shape["segmentation"] = points if kind == "flat" else [points]
        return shape
    if kind == "box":
        shape["segmentation"] = []
        return shape
    mask = np.array(draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height)))
    mask = mask.reshape(height, width)
    from pycocotools import mask as mask_utils

    if kind == "rle_list":
        flat = mask.ravel(order="F").astype(np.int8)
        change = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        runs = ([0] + runs) if flat[0] else runs
        runs[-1] += draw(rarely(st.just(0), st.sampled_from([-1, 1]), one_in=16))
        shape["segmentation"] = {"size": [height, width], "counts": runs}
    else:
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        damage = draw(rarely(st.just("none"), st.sampled_from(["truncate", "append", "garbage"]), one_in=8))
        counts = {
            "none": counts,
            "truncate": counts[:-1],
            "append": counts + "0",
            "garbage": counts + "\x7f",
        }[damage]
        shape["segmentation"] = {"size": [height, width], "counts": counts}
    return shape


@st.composite
def xml_shape(draw, width: int, height: int) -> str:
    kind = draw(
        st.sampled_from(["polygon", "polygon", "polygon", "mask", "mask", "ellipse", "box", "tag", "polyline"])
    )
    label = draw(st.sampled_from(["car", "car", "road"]))
    z_order = draw(st.integers(-2, 2))
    if kind == "ellipse":
        cx, cy = draw(coordinate), draw(coordinate)
        rx, ry = (draw(rarely(st.floats(0, 8), st.sampled_from([-1.0, 0.0, float("nan")]), one_in=20)) for _ in "xy")
        rotation = draw(st.floats(-360, 360))
        return (
            f'<ellipse label="{label}" cx="{cx:.2f}" cy="{cy:.2f}" rx="{rx:.2f}" ry="{ry:.2f}" '
            f'rotation="{rotation:.2f}" z_order="{z_order}"/>'
        )
    if kind in ("polygon", "polyline"):
        points = draw(
            st.lists(
                st.tuples(coordinate, coordinate), min_size=draw(rarely(st.just(3), st.just(1))), max_size=6
            )
        )
        text = ";".join(f"{x},{y}" for x, y in points)
        return f'<{kind} label="{label}" points="{text}" z_order="{z_order}"/>'
    if kind == "mask":
        left, top = draw(st.integers(-3, width)), draw(st.integers(-3, height))
        box_w, box_h = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        bits = draw(st.lists(st.booleans(), min_size=box_w * box_h, max_size=box_w * box_h))
        runs, current, length = [], False, 0
        for bit in bits:
            if bit != current:
                runs.append(length)
                current, length = bit, 0
            length += 1
        runs.append(length)
        runs[-1] += draw(rarely(st.just(0), st.just(1), one_in=16))
        rle = ",".join(map(str, runs))
        return (
            f'<mask label="{label}" rle="{rle}" left="{left}" top="{top}" width="{box_w}" height="{box_h}" '
            f'z_order="{z_order}"/>'
        )
    if kind == "box":
        return f'<box label="{label}" xtl="1" ytl="1" xbr="3" ybr="3" z_order="{z_order}"/>'
    return f'<tag label="{label}"/>'


@st.composite
def specs(draw) -> Spec:
    spec = Spec(
        layout=draw(st.sampled_from(["coco", "xml", "coco_project", "xml_project", "video"])),
        stuff=draw(st.booleans()),
        overlap=draw(st.sampled_from(["area", "order"])),
    )
    layout_values = json_values if spec.layout.startswith("coco") else xml_values
    spec.mutation = draw(rarely(st.none(), st.tuples(st.integers(0, 10**6), layout_values), one_in=4))
    for index in range(draw(st.integers(1, 3))):
        width, height = draw(st.integers(3, 10)), draw(st.integers(3, 8))
        if spec.layout == "video" and spec.images:  # a video's frames share the task's size
            width, height = spec.images[0]["width"], spec.images[0]["height"]
        shape_strategy = coco_shape if spec.layout.startswith("coco") else xml_shape
        spec.images.append(
            {
                "id": draw(rarely(st.just(index + 1), st.just(1), one_in=30)),  # sometimes a duplicate id
                "name": draw(rarely(st.just(DEFAULT_NAMES[index]), st.sampled_from(NAMES), one_in=6)),
                "width": width,
                "height": height,
                "picture": draw(rarely(st.just("ok"), st.sampled_from(PICTURE_STATES), one_in=6)),
                # Project exports: equal names in both subsets are the usual case.
                "subset": draw(st.sampled_from(["Train", "Test"])),
                "frame": index * 3,  # video: frames with gaps
                "outside": draw(st.lists(rarely(st.just(False), st.just(True), one_in=5), min_size=4, max_size=4)),
                "shapes": draw(
                    st.lists(
                        shape_strategy(width, height),
                        min_size=draw(rarely(st.just(1), st.just(0))),
                        max_size=4,
                    )
                ),
            }
        )
    return spec


def _write_picture(path: Path, info: dict, seed: int) -> np.ndarray | None:
    """Write the picture of an image; returns the 8-bit RGB pixels the output must hold."""
    width, height, state = info["width"], info["height"], info["picture"]
    if state == "missing":
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if state == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
        return None
    if state == "gray16":
        grey = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        Image.fromarray(grey).save(path)
        scaled = ((grey.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(scaled[..., None], 3, axis=2)
    size = (width + 1, height) if state == "wrong_size" else (width, height)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _normalised(name: str) -> str:
    import posixpath

    return posixpath.normpath(name)


def _key(spec: Spec, info: dict) -> str:
    """The image's identity as the converter must see it (subset + name in a project)."""
    if spec.layout == "video":
        return f"frame_{info['frame']:06d}.PNG"
    if spec.layout.endswith("project"):
        return f"{info['subset']}/{_normalised(info['name'])}"
    return _normalised(info["name"])


def _picture(spec: Spec, export: Path, info: dict) -> Path:
    """Where CVAT puts the picture: ``images/``, ``images/<subset>/``, ``images/frame_000003.PNG``."""
    if spec.layout == "video":
        return export / "images" / f"frame_{info['frame']:06d}.PNG"
    if spec.layout.endswith("project"):
        return export / "images" / info["subset"] / info["name"]
    return export / "images" / info["name"]


def _video_xml(spec: Spec) -> str:
    """Every shape of a frame as a one-shape track (``outside="1"``: drawn but not on that frame)."""
    tracks = []
    for info in spec.images:
        for shape, outside in zip(info["shapes"], info["outside"], strict=False):
            shape = shape.replace("<tag ", "<points ", 1)  # tracks hold no tags
            tag, label = re.match(r'<(\w+) label="([^"]*)"', shape).groups()
            body = shape.replace(f' label="{label}"', f' frame="{info["frame"]}" outside="{int(outside)}" keyframe="1"', 1)
            tracks.append(f'<track id="{len(tracks)}" label="{label}" source="manual">{body}</track>')
    width, height = spec.images[0]["width"], spec.images[0]["height"]
    labels = "<label><name>car</name></label><label><name>road</name></label>"
    meta = (
        f"<task><id>1</id><mode>interpolation</mode><start_frame>0</start_frame><labels>{labels}</labels>"
        f"<original_size><width>{width}</width><height>{height}</height></original_size></task>"
    )
    return f"<annotations><version>1.1</version><meta>{meta}</meta>{''.join(tracks)}</annotations>"


def write_export(spec: Spec, root: Path) -> tuple[Path, dict[str, np.ndarray | None]]:
    """The export under ``root/export`` and the expected pixels per image key (last writer wins)."""
    export = root / "export"
    (export / "images").mkdir(parents=True)
    pictures: dict[str, np.ndarray | None] = {}
    for seed, info in enumerate(spec.images):
        pictures[_key(spec, info)] = _write_picture(_picture(spec, export, info), info, seed)
    if spec.layout == "video":
        text = _video_xml(spec)
        if spec.mutation is not None:
            text = _mutate_xml(text, *spec.mutation)
        (export / "annotations.xml").write_text(text)
    elif spec.layout == "coco_project":
        docs = {}
        for info in spec.images:
            doc = docs.setdefault(info["subset"], {"images": [], "annotations": [], "categories": categories()})
            doc["images"].append({k: info[k] for k in ("id", "width", "height")} | {"file_name": info["name"]})
            for shape in info["shapes"]:
                doc["annotations"].append(
                    {
                        "id": len(doc["annotations"]) + 1,
                        "image_id": info["id"] + shape["image_offset"],
                        "category_id": shape["category_id"],
                        "segmentation": shape["segmentation"],
                    }
                )
        (export / "annotations").mkdir()
        if spec.mutation is not None:
            where, value = spec.mutation
            _mutate_json(docs[sorted(docs)[where % len(docs)]], where, value)
        for subset, doc in docs.items():
            (export / "annotations" / f"instances_{subset}.json").write_text(json.dumps(doc))
    elif spec.layout == "coco":
        images, annotations = [], []
        for info in spec.images:
            images.append({k: info[k] for k in ("id", "width", "height")} | {"file_name": info["name"]})
            for shape in info["shapes"]:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": info["id"] + shape["image_offset"],
                        "category_id": shape["category_id"],
                        "segmentation": shape["segmentation"],
                    }
                )
        doc = {"images": images, "annotations": annotations, "categories": categories()}
        (export / "annotations").mkdir()
        if spec.mutation is not None:
            _mutate_json(doc, *spec.mutation)
        (export / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    else:
        project = spec.layout == "xml_project"
        body = "".join(
            f'<image id="{info["id"]}" name="{info["name"]}" width="{info["width"]}" height="{info["height"]}"'
            + (f' subset="{info["subset"]}" task_id="{1 + (info["subset"] == "Test")}"' if project else "")
            + ">"
            + "".join(info["shapes"])
            + "</image>"
            for info in spec.images
        )
        labels = "<label><name>car</name></label><label><name>road</name></label>"
        text = f"<annotations><meta><task><labels>{labels}</labels></task></meta>{body}</annotations>"
        if spec.mutation is not None:
            text = _mutate_xml(text, *spec.mutation)
        (export / "annotations.xml").write_text(text)
    return export, pictures


def _keys_with_masks(spec: Spec) -> set[str]:
    """Keys of the images that get at least one mask-carrying annotation (COCO ones may move)."""
    area = ("<polygon", "<mask", "<ellipse")
    keys = set()
    if spec.layout.startswith("coco"):
        for info in spec.images:
            # A COCO annotation names its image by id within its own file (one file per subset).
            same_file = [i for i in spec.images if spec.layout == "coco" or i["subset"] == info["subset"]]
            by_id = {i["id"]: i for i in reversed(same_file)}  # the first image of an id
            for shape in info["shapes"]:
                target = by_id.get(info["id"] + shape["image_offset"])
                if shape["segmentation"] != [] and target is not None:
                    keys.add(_key(spec, target))
        return keys
    for info in spec.images:
        outside = info["outside"] if spec.layout == "video" else [False] * len(info["shapes"])
        if any(shape.startswith(area) and not out for shape, out in zip(info["shapes"], outside, strict=False)):
            keys.add(_key(spec, info))
    return keys


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _NoCapsys:
    """`pq_against_itself` wants pytest's capsys; stdout is redirected around it instead."""

    def readouterr(self) -> None:
        return None


def check_output(spec: Spec, out: Path, pictures: dict[str, np.ndarray | None]) -> None:
    docs = check_panoptic_folder(out)
    report = json.loads((out / "report.json").read_text())
    written: dict[str, str] = {}
    for split, doc in docs.items():
        for img in doc["images"]:
            written[img["file_name"]] = split
        if any(ann["segments_info"] for ann in doc["annotations"]):
            with contextlib.redirect_stdout(io.StringIO()):
                assert pq_against_itself(out, split, _NoCapsys()) == pytest.approx(1.0)
    event(f"exit 0 {'mutated' if spec.mutation else 'checked against the spec'}")
    if spec.mutation is not None:  # the spec no longer says which pictures must be there
        return
    names = {key: report["renamed_images"].get(key, key) for key in pictures}  # output name per key
    expected = _keys_with_masks(spec)
    assert {key for key in expected if names[key] in written} == expected, "a picture was dropped"
    assert len(written) == len(expected), "pictures were merged or invented"
    for key in expected:
        with Image.open(out / written[names[key]] / names[key]) as img:
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), pictures[key])


def run_in_process(spec: Spec, root: Path) -> None:
    export, pictures = write_export(spec, root)
    event(f"layout {spec.layout}")
    out = root / "out"
    argv = ["--cvat", str(export), "--out", str(out), "--overlap", spec.overlap, "--val-ratio", "0.5"]
    argv += ["--stuff-labels", "road"] if spec.stuff else []
    errors = _Errors()
    logger = logging.getLogger("cvat_to_panoptic")
    logger.addHandler(errors)
    try:
        code = main(argv)
    finally:
        logger.removeHandler(errors)
    event(f"exit {code}")
    if code == 0:
        assert not errors.lines
        check_output(spec, out, pictures)
    else:
        assert code == 2
        event("refused: " + re.sub(r"/\S+", "", errors.lines[0])[7:60])
        assert (
            len(errors.lines) == 1 and errors.lines[0].startswith("error: ") and "\n" not in errors.lines[0]
        )
        assert no_output_left(root, out)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(spec=specs())
def test_any_export_converts_or_is_refused_in_one_line(spec, tmp_path):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        run_in_process(spec, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
@given(spec=specs())
def test_the_command_exits_0_or_2_without_traceback(spec, tmp_path):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        export, _ = write_export(spec, root)
        out = root / "out"
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dataset_scripts.cvat_to_panoptic",
                "--cvat",
                str(export),
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if proc.returncode == 2:
            assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
            assert no_output_left(root, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
