"""The optimiser: weight decay on the matrices only; checkpoints from before that resume exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from charrnn.config import Config
from charrnn.errors import CheckpointError
from charrnn.model.lstm import CharLSTM, ModelShape
from charrnn.train.state import regroup_optimizer_state
from charrnn.train.trainer import make_optimizer


def _model(seed: int = 0) -> CharLSTM:
    torch.manual_seed(seed)
    cfg = Config.model_validate({"model": {"hidden_size": 16, "embedding_dim": 8, "dropout": 0.0}})
    return CharLSTM(ModelShape.from_config(cfg.model, vocab_size=11))


def _step(model: CharLSTM, optimizer: torch.optim.Optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    tokens = torch.randint(0, 11, (4, 9))
    logits, _ = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_weight_decay_applies_to_matrices_and_spares_biases():
    model = _model()
    optimizer = make_optimizer(
        model, Config.model_validate({"train": {"weight_decay": 0.05}}).train
    )
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in spared["params"]) == sorted(
        n for n, p in model.named_parameters() if "bias" in n
    )
    assert {names[id(p)] for p in decayed["params"]} >= {
        "embed.weight",
        "head.weight",
        "lstm.weight_hh_l0",
    }
    assert len(decayed["params"]) + len(spared["params"]) == len(list(model.parameters()))


def test_a_one_group_optimizer_state_resumes_into_the_grouped_optimizer_exactly():
    """A checkpoint from before the groups existed: same moments per parameter, same next update."""
    t = Config.model_validate({"train": {"weight_decay": 0.0}}).train
    old_model, new_model = _model(), _model()
    old_opt = torch.optim.AdamW(
        old_model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=0.0, fused=True
    )
    for seed in range(3):
        _step(old_model, old_opt, seed)
    new_model.load_state_dict(old_model.state_dict())
    new_opt = make_optimizer(new_model, t)
    # as torch.load gives it: tensors not shared with old_opt
    saved = copy.deepcopy(old_opt.state_dict())
    assert len(saved["param_groups"]) == 1 and len(new_opt.param_groups) == 2

    new_opt.load_state_dict(regroup_optimizer_state(saved, new_model, new_opt))

    for p_old, p_new in zip(old_model.parameters(), new_model.parameters(), strict=True):
        assert torch.equal(old_opt.state[p_old]["exp_avg_sq"], new_opt.state[p_new]["exp_avg_sq"])
    assert [g["weight_decay"] for g in new_opt.param_groups] == [0.0, 0.0]
    _step(old_model, old_opt, 99)
    _step(new_model, new_opt, 99)
    for p_old, p_new in zip(old_model.parameters(), new_model.parameters(), strict=True):
        torch.testing.assert_close(p_old, p_new, rtol=0, atol=1e-7)


def test_a_state_in_todays_layout_passes_through():
    model = _model()
    optimizer = make_optimizer(model, Config().train)
    _step(model, optimizer, 0)
    saved = optimizer.state_dict()
    assert regroup_optimizer_state(saved, model, optimizer) is saved


def test_an_optimizer_state_of_another_shape_is_refused_clearly():
    model = _model()
    optimizer = make_optimizer(model, Config().train)
    saved = {"state": {}, "param_groups": [{"params": []}] * 3}
    with pytest.raises(CheckpointError, match="3 parameter groups"):
        regroup_optimizer_state(saved, model, optimizer)
