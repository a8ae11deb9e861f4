"""Shared pytest fixtures: paths, the maintainers' real data, tiny DETR models built in code.

Tests never download: models are built from small configs (timm resnet18, random init) and saved
to `tmp_path`; `HF_HUB_OFFLINE=1` is forced below so that any accidental Hub access fails fast.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# The network guard of the Hub stand-in, as a fixture any test module may request.
from tests.hub_standin import no_network  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "real"
SAMPLE_DATA = REPO_ROOT / "sample_data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The maintainers' real exports (`../shared/data/real`); skips when absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/real is not present")
    return SHARED_DATA


def tiny_detr_config(num_labels: int = 5, **overrides):
    """A DetrConfig small enough to train on 2 CPU cores: timm resnet18 (random init), d_model 64.

    The mask head needs ``d_model + num_heads`` divisible by 8, hence 64 + 8.
    """
    from transformers import DetrConfig

    from finetune.modeling.loading import TINY_DETR_ARCHITECTURE

    return DetrConfig(**{**TINY_DETR_ARCHITECTURE, "num_labels": num_labels, **overrides})


@pytest.fixture
def make_tiny_detr_config():
    """Factory fixture: ``make_tiny_detr_config(num_labels=..., **overrides)``."""
    return tiny_detr_config


@pytest.fixture
def network_attempts(monkeypatch) -> list[tuple]:
    """Every attempt to open a network connection, refused: an offline run must not even try (no retries)."""
    attempts: list[tuple] = []

    def refuse(name):
        def refused(*args, **kwargs):
            attempts.append((name, args[1:] if name == "socket.connect" else args))
            raise OSError(f"network access in a test ({name})")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


@pytest.fixture
def fresh_accelerate_state():
    """For `finetune.train.main`/`train` run in the test process: no accelerate state before or after, one thread.

    One thread, as the training subprocesses run (OMP_NUM_THREADS=1), so that weights compare exactly.
    """
    import torch
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)
