"""`BestModelKeeper`: the kept weights are those of the improving evaluation, written later, without
touching the trained model or the RNG stream."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DetrForSegmentation

from finetune.training.best_model import BestModelKeeper
from tests.conftest import tiny_detr_config


def test_flush_writes_the_remembered_weights_and_leaves_rng_and_model_alone(tmp_path):
    torch.manual_seed(0)
    model = DetrForSegmentation(tiny_detr_config())
    written: list[tuple[dict, Path, dict]] = []
    keeper = BestModelKeeper(lambda m, folder, results: written.append((m.state_dict(), folder, results)))

    keeper.remember(model, tmp_path / "best_detection", {"box_map": 0.5})
    remembered = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # training goes on after the evaluation
        for parameter in model.parameters():
            parameter.add_(1.0)
    after_training = {k: v.clone() for k, v in model.state_dict().items()}

    rng = torch.random.get_rng_state()
    keeper.flush()
    assert torch.equal(torch.random.get_rng_state(), rng)  # a resumed run sees the same random stream
    [(state, folder, results)] = written
    assert folder == tmp_path / "best_detection" and results == {"box_map": 0.5}
    for name, tensor in remembered.items():
        assert torch.equal(state[name], tensor), name
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, after_training[name]), name
    keeper.flush()
    assert len(written) == 1  # nothing pending any more
