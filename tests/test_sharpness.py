"""balance.engine.sharpness: lambda_max by Lanczos against the dense autograd Hessian; divergence advice that works."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, TANH, make_config

from balance.config.presets import preset
from balance.engine.data import loss_value
from balance.engine.sharpness import extreme_eigenvalues, hessian_operator, initial_sharpness, nice_below, step_advice
from balance.engine.trainer import Trainer
from balance.runs.loop import run

SMALL = [f for f in FAMILIES if f.id in ("mf", "mlp-relu-bias", "linear", "cnn")] + [TANH]


@pytest.mark.parametrize("family", SMALL, ids=lambda f: f.id)
def test_lanczos_finds_the_dense_hessians_extreme_eigenvalues(family):
    trainer = Trainer(make_config(family, steps=1))
    task, model, params = trainer.task, trainer.model, trainer.params
    names = [name for name, _ in model.named_parameters()]
    sizes = [p.numel() for p in params]

    def loss_of(x: torch.Tensor) -> torch.Tensor:  # an independent reading of the objective, for autograd's Hessian
        weights = {name: part.reshape(p.shape) for name, part, p in zip(names, torch.split(x, sizes), params)}
        pred = torch.func.functional_call(model, weights, () if task.inputs is None else (task.inputs,))
        return loss_value(pred, task.targets, task.loss, task.name)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    dense = torch.autograd.functional.hessian(loss_of, flat)
    expected = torch.linalg.eigvalsh((dense + dense.T) / 2)
    hvp, n = hessian_operator(trainer._objective(), params)
    low, high = extreme_eigenvalues(hvp, n, steps=n)
    scale = float(expected.abs().max())
    assert abs(high - float(expected[-1])) <= 1e-10 * scale
    assert abs(low - float(expected[0])) <= 1e-10 * scale


def test_nice_below():
    assert [nice_below(x) for x in (0.467, 0.5, 1.0, 3.7, 1e-3 * 1.9)] == [0.2, 0.5, 1.0, 2.0, 1e-3]


@pytest.mark.parametrize(
    ("name", "halving_diverges"),
    [("fig1-small", True), ("fig1-large", True), ("mlp-relu", False), ("linear-deep", False)],
)
def test_the_advice_after_a_divergence_trains_where_halving_did_not(name, halving_diverges):
    """Issue 12.11: "try a step size below 5" (half the step) still diverged at 5, 2, 1 and 0.5."""
    config = preset(name).replace(**{"optim.lr": 5.0, "steps": 1500})
    status = run(config)[1]
    assert status.state == "diverged"
    assert "try a step size of" in status.message
    halved = run(config.replace(**{"optim.lr": 2.5}))[1]
    value, why = step_advice(config, 5.0)
    assert f"try a step size of {value:g}" in status.message and why in status.message
    assert run(config.replace(**{"optim.lr": value}))[1].state == "finished"
    assert (halved.state == "diverged") == halving_diverges  # where the old advice sent people


def test_sharpness_of_mf_at_a_small_start_is_the_targets_top_singular_value():
    """At U, V ~ 0 the Hessian of 1/2 ||U V^T - M||^2 is [[0, M], [M^T, 0]] (per column): lambda_max = s_1(M)."""
    config = preset("fig1-small").replace(**{"model.init_scale": 1e-6})
    s1 = max(config.data.singular_values) if config.data.singular_values else float(config.data.rank)
    assert initial_sharpness(config) == pytest.approx(s1, rel=1e-6)
