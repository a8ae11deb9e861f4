"""Stuff pseudo-labels on several processes: ``torchrun`` (what ``accelerate launch`` starts) shards the
pictures over two CPU workers, and the cache they fill is the one a single process fills."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DetrForSegmentation, DetrImageProcessor

from dataset_scripts import stuff_model
from dataset_scripts.stuff_model import load_stuff_map
from tests.test_stuff_model import images, tiny_model_dir  # noqa: F401  (fixtures)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def confident_model_dir(tmp_path, tiny_model_dir) -> Path:  # noqa: F811 (the imported fixture)
    """The tiny model with a sharpened class head: confident, varied labels, hence non-void stuff maps."""
    model = DetrForSegmentation.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.detr.class_labels_classifier.weight *= 100.0
        model.detr.class_labels_classifier.bias[-1] = -100.0  # never "no object"
    model.save_pretrained(tmp_path / "confident")
    DetrImageProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "confident")
    return tmp_path / "confident"


def test_torchrun_two_processes_fill_the_same_cache_as_one(tmp_path, confident_model_dir, images, repo_root):  # noqa: F811
    """`torchrun --nproc_per_node 2` (what `accelerate launch` starts) shards the pictures; the cache is the
    one a single process writes (batch size 1: each picture's map does not depend on its batch)."""
    folder = str(images[0][1].parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    options = [
        "--model",
        str(confident_model_dir),
        "--device",
        "cpu",
        "--threshold",
        "0.5",
        "--batch-size",
        "1",
    ]
    script = "dataset_scripts/stuff_model.py"
    single = [sys.executable, script, folder, "--cache-dir", str(tmp_path / "one"), *options]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    sharded = [*torchrun, script, folder, "--cache-dir", str(tmp_path / "two"), *options]
    for command in (single, sharded):
        done = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "labelled by 2 processes (2, 1)" in done.stderr
    keys = [key for key, _ in stuff_model.collect_images([Path(folder)])]
    assert len(keys) == 3
    labelled = 0
    for key in keys:
        one, two = load_stuff_map(tmp_path / "one", key), load_stuff_map(tmp_path / "two", key)
        np.testing.assert_array_equal(one, two)
        labelled += int((one >= 0).sum())
    assert labelled > 0  # something to compare
    listing = {p.name for p in (tmp_path / "one" / "maps").iterdir()}
    assert listing == {p.name for p in (tmp_path / "two" / "maps").iterdir()} and len(listing) == 3
    info = [json.loads((tmp_path / run / "cache_info.json").read_text()) for run in ("one", "two")]
    assert info[0]["fingerprint"] == info[1]["fingerprint"]
