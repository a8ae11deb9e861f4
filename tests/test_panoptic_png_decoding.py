"""The fast PNG decoder (libspng via pyspng) and the PIL fallback give identical arrays; the id
helpers equal transformers' ``rgb_to_id`` / ``id_to_rgb``, dtypes included."""

from __future__ import annotations

import io
import platform
import struct
import subprocess
import sys
import zlib

import numpy as np
import pyspng  # a hard requirement (requirements.txt): a missing pyspng fails here, never skips
import pytest
from PIL import Image

from dataset_scripts import panoptic_format
from dataset_scripts.panoptic_format import (
    PanopticFormatError,
    id2rgb,
    read_panoptic_ids,
    read_panoptic_png,
    read_panoptic_rgb,
    rgb2id,
)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def handmade_png(pixels: np.ndarray, color_type: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG PIL cannot write (16-bit RGB, chunks such as tRNS / gAMA): ``(H, W[, C])`` uint8 or
    big-endian uint16 samples, filter type 0 on every row."""
    height, width = pixels.shape[:2]
    bit_depth = 16 if pixels.dtype.itemsize == 2 else 8
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", ihdr), *(_chunk(t, d) for t, d in extra), _chunk(b"IDAT", zlib.compress(raw))]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b"")


def _pil_png(array: np.ndarray, mode: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _random_ids(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blocks of ids over all three channels plus single-pixel noise (stresses every PNG filter)."""
    ids = rng.integers(0, 256**3, size=(max(height // 4, 1), max(width // 4, 1)))
    ids = np.kron(ids, np.ones((4, 4), dtype=np.int64))[:height, :width]
    ids = np.pad(ids, ((0, height - ids.shape[0]), (0, width - ids.shape[1])))
    noise = rng.random((height, width)) < 0.05
    ids[noise] = rng.integers(0, 256**3, size=int(noise.sum()))
    return ids


def _decode_both(path, monkeypatch, read) -> tuple[object, object, int]:
    """``read(path)`` with the fast decoder and with PIL only (array or the error's message), and
    how many times libspng was called."""
    calls = []
    real_load = pyspng.load

    def counting_load(data, format=None):
        calls.append(format)
        return real_load(data, format=format)

    results = []
    for fast in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(panoptic_format, "_spng", pyspng if fast else None)
            patch.setattr(pyspng, "load", counting_load)
            try:
                results.append(read(path))
            except (PanopticFormatError, FileNotFoundError) as err:
                results.append(f"{type(err).__name__}: {err}")
    return results[0], results[1], len(calls)


def _assert_same(fast, slow):
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert isinstance(fast, np.ndarray), fast
        assert fast.dtype == slow.dtype and fast.shape == slow.shape
        assert np.array_equal(fast, slow)


@pytest.mark.parametrize("compress_level", [0, 1, 6, 9])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (48, 64)])
def test_fast_decoder_equals_pil_on_rgb_and_rgba(tmp_path, monkeypatch, compress_level, shape):
    rng = np.random.default_rng(compress_level * 100 + shape[1])
    ids = _random_ids(rng, *shape)
    rgb = id2rgb(ids)
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(*shape, 1), dtype=np.uint8)], axis=2)
    for name, data in (
        ("rgb.png", _pil_png(rgb, "RGB", compress_level=compress_level)),
        ("rgba.png", _pil_png(rgba, "RGBA", compress_level=compress_level)),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        for read in (read_panoptic_rgb, read_panoptic_ids, read_panoptic_png):
            fast, slow, calls = _decode_both(path, monkeypatch, read)
            assert calls == 1, f"{name}: the fast decoder was not used"
            _assert_same(fast, slow)
        assert np.array_equal(read_panoptic_png(path), ids)  # alpha ignored, as panopticapi does
        assert read_panoptic_ids(path).dtype == np.uint32


def test_fast_decoder_ignores_transparency_and_gamma_chunks(tmp_path, monkeypatch):
    """tRNS / gAMA do not change the ids: neither decoder applies them to R, G, B."""
    rgb = id2rgb(_random_ids(np.random.default_rng(5), 9, 11))
    trns = struct.pack(">HHH", *rgb[0, 0].tolist())
    path = tmp_path / "chunks.png"
    path.write_bytes(handmade_png(rgb, 2, ((b"gAMA", struct.pack(">I", 45455)), (b"tRNS", trns))))
    for read in (read_panoptic_rgb, read_panoptic_ids):
        fast, slow, calls = _decode_both(path, monkeypatch, read)
        assert calls == 1
        _assert_same(fast, slow)
    assert np.array_equal(read_panoptic_rgb(path), rgb)


def _corrupt(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


def _edge_cases(rng) -> dict[str, bytes]:
    gray = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
    rgb16 = rng.integers(0, 2**16, size=(5, 6, 3)).astype(np.uint16)
    palette = Image.fromarray(gray, mode="L").convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    return {
        "palette": buf.getvalue(),
        "gray": _pil_png(gray, "L"),
        "gray_alpha": _pil_png(np.stack([gray, gray], axis=2), "LA"),
        "gray16": handmade_png(gray.astype(np.uint16) * 257, 0),
        "rgb16": handmade_png(rgb16, 2),
        "rgba16": handmade_png(np.concatenate([rgb16, rgb16[..., :1]], axis=2), 6),
        "truncated_rgb": _pil_png(id2rgb(_random_ids(rng, 20, 20)), "RGB")[:60],
        "not_a_png": b"GIF89a not a png at all",
        "bad_header_crc": _corrupt(_pil_png(id2rgb(_random_ids(rng, 6, 6)), "RGB"), 29),
    }


@pytest.mark.parametrize("case", list(_edge_cases(np.random.default_rng(0))))
def test_other_png_kinds_decode_or_fail_as_with_pil(tmp_path, monkeypatch, case):
    """Palette, grey, 16-bit: PIL decides (refuses, or for 16-bit RGB keeps the high bytes), so
    the result, or the error message, is the same with and without the fast decoder."""
    path = tmp_path / f"{case}.png"
    path.write_bytes(_edge_cases(np.random.default_rng(0))[case])
    for read in (read_panoptic_rgb, read_panoptic_ids):
        fast, slow, _ = _decode_both(path, monkeypatch, read)
        if case != "truncated_rgb":  # libspng and PIL word a broken stream differently
            _assert_same(fast, slow)
        if case in ("palette", "gray", "gray_alpha", "gray16"):
            assert "panoptic PNG must be RGB, got mode" in fast
        if case in ("truncated_rgb", "not_a_png", "bad_header_crc"):
            assert isinstance(fast, str) and f"{case}.png: cannot decode panoptic PNG" in fast
            assert "PanopticFormatError" in slow
    if case == "rgb16":
        rgb16 = np.random.default_rng(0)  # same draws as _edge_cases
        rgb16.integers(0, 256, size=(5, 6), dtype=np.uint8)
        high = (rgb16.integers(0, 2**16, size=(5, 6, 3)).astype(np.uint16) >> 8).astype(np.uint8)
        assert np.array_equal(read_panoptic_rgb(path), high)


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="panoptic PNG not found: .*nope.png"):
        read_panoptic_ids(tmp_path / "nope.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(PanopticFormatError, match="folder.png: cannot read panoptic PNG"):
        read_panoptic_ids(tmp_path / "folder.png")


def test_id_helpers_equal_transformers(tmp_path):
    from transformers.image_transforms import id_to_rgb, rgb_to_id

    rng = np.random.default_rng(3)
    ids = _random_ids(rng, 17, 23)
    ids[0, :4] = [0, 255, 65535, 256**3 - 1]
    rgb = id2rgb(ids)
    theirs_rgb = id_to_rgb(ids)
    assert rgb.dtype == theirs_rgb.dtype == np.uint8 and np.array_equal(rgb, theirs_rgb)
    ours = rgb2id(rgb)
    assert ours.dtype == np.int64 and np.array_equal(ours, ids)
    theirs = rgb_to_id(rgb)  # int32 for uint8 input: same values
    assert np.array_equal(ours, theirs)
    path = tmp_path / "ids.png"
    path.write_bytes(_pil_png(rgb, "RGB"))
    assert np.array_equal(read_panoptic_ids(path), theirs)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_memory_stops_page_faults_per_decode(tmp_path, repo_root):
    """Without it, every decode page-faults its whole output buffer afresh (see its docstring)."""
    path = tmp_path / "big.png"
    path.write_bytes(_pil_png(id2rgb(_random_ids(np.random.default_rng(9), 480, 640)), "RGB"))
    code = (
        "import resource, sys\n"
        "from dataset_scripts.panoptic_format import read_panoptic_ids, retain_freed_memory\n"
        "if sys.argv[2] == 'retain':\n"
        "    retain_freed_memory()\n"
        "read_panoptic_ids(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(40):\n"
        "    a, b = read_panoptic_ids(sys.argv[1]), read_panoptic_ids(sys.argv[1])\n"
        "    del a, b\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("retain", "default"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path), mode],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        faults[mode] = int(proc.stdout)
    pages_per_image = 480 * 640 * 4 // 4096
    # the two buffers alive at once fault once each, not once per decode (80 decodes: ~80 x 300 pages)
    assert faults["retain"] <= 2 * pages_per_image, faults
