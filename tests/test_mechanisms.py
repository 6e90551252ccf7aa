"""What moves the gap (issue 16), float64: label-noise GD's and SGD's per-sample factor, SAM's perturbed-gradient
identity and law, the sharpness metric (exact for small models) and the stability bound on converged runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILIES, FAMILY_IDS, Family, law_residual, make_config, train_frame

from balance.config import OptimConfig, RunConfig
from balance.engine import laws
from balance.engine.engine import Engine
from balance.engine.models import build_model
from balance.engine.networks import objective

RELU = FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]
CNN = FAMILIES[FAMILY_IDS.index("cnn-bias")]
MF = FAMILIES[0]


# --- SGD and label noise: the scalar chain's factor and the general identity ---------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_scalar_chain_factor_per_sample(seed: int) -> None:
    """f = u w x, loss (u w x - y)^2 / 2: one SGD step on one sample multiplies Phi = u^2 - w^2 by exactly
    (1 - eta^2 r^2 x^2), r = u w x - y (Ziyin et al.), with autograd's gradient."""
    gen = torch.Generator().manual_seed(seed)
    u, w, x, y = (torch.randn((), generator=gen, dtype=torch.float64) for _ in range(4))
    u.requires_grad_(True)
    w.requires_grad_(True)
    eta = 0.3
    r = (u * w * x - y).detach()
    gu, gw = torch.autograd.grad(0.5 * (u * w * x - y) ** 2, (u, w))
    with torch.no_grad():
        phi0 = u**2 - w**2
        phi1 = (u - eta * gu) ** 2 - (w - eta * gw) ** 2
    expected = (1 - eta**2 * r**2 * x**2) * phi0
    assert abs(float(phi1 - expected)) <= 1e-10 * abs(float(phi0))


def _chain(optim: OptimConfig, steps: int = 3000) -> RunConfig:
    """The scalar chain u w x as a depth-2 linear network of width 1, from an unbalanced start (|w| = |u| / 10)."""
    return RunConfig.from_dict(
        {
            "data": {"name": "teacher", "samples": 16, "input_dim": 1, "output_dim": 1, "noise": 0.0},
            "model": {"name": "linear", "depth": 2, "width": 1, "init_scale": 1.5, "layer_scales": [0.1, 1.0]},
            "optim": optim.__dict__ | {},
            "steps": steps,
            "seed": 0,
        }
    )


@pytest.mark.parametrize(
    "optim",
    [OptimConfig(name="label_noise", lr=0.1, label_noise=1.0), OptimConfig(name="sgd", lr=0.1, batch_size=1)],
    ids=["label-noise", "sgd-batch-1"],
)
def test_noise_balances_the_chain_exactly_as_predicted(optim: OptimConfig) -> None:
    """The general (mini-batch) identity G_{k+1} = G_k + eta^2 Delta||g_k||^2 predicts every step to round-off, and
    the noise drives the gap towards 0 where full-batch GD freezes it at the optimum."""
    noisy = train_frame(_chain(optim))
    plain = train_frame(_chain(OptimConfig(name="gd", lr=0.1)))
    assert law_residual(noisy) <= 1e-10 and law_residual(plain) <= 1e-10
    gap0 = noisy[laws.column("gap", 1)].iloc[0]
    assert abs(plain[laws.column("gap", 1)].iloc[-1] / gap0) > 0.9  # GD: conserved up to eta^2 (0.953)
    assert abs(noisy[laws.column("gap", 1)].iloc[-1] / gap0) < 0.2  # noise: balanced (0.16, 4e-9)


def test_label_noise_is_fresh_each_step_and_seeded() -> None:
    config = make_config(RELU, optim=OptimConfig(name="label_noise", lr=0.05, label_noise=0.3), steps=20)
    a, b = train_frame(config), train_frame(config)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert law_residual(a) <= 1e-10
    clean = train_frame(config.replace(**{"optim.label_noise": 0.0}))
    gd = train_frame(config.replace(**{"optim.name": "gd"}))
    pd.testing.assert_frame_equal(clean, gd, check_exact=True)  # sigma = 0 is GD
    assert not np.allclose(a["loss"], gd["loss"])


# --- SAM -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [RELU, CNN, MF], ids=["mlp-relu-bias", "cnn-bias", "mf"])
def test_sam_perturbed_gradient_identity(family: Family) -> None:
    """Euler's identity at the perturbed point theta~ = theta + rho g/||g||: Delta<theta, g~> = -rho Delta<g^, g~>
    for every pair, float64, with autograd."""
    config = make_config(family, seed=2)
    engine = Engine([config])
    model = build_model(config, engine.tasks[0], torch.Generator().manual_seed(2), torch.float64)
    task = engine.tasks[0]
    rho = 0.3
    params = model.params
    g = torch.autograd.grad(objective(model, task), params)
    norm = torch.sqrt(sum((x * x).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g):
            p.add_(rho * x / norm)
    tilde = torch.autograd.grad(objective(model, task), params)
    with torch.no_grad():
        for p, x in zip(params, g):
            p.sub_(rho * x / norm)
    P = engine.P
    theta_g = np.array([float((p.detach() * t).sum()) for p, t in zip(params, tilde)]) @ P.T
    ghat_g = np.array([float((x * t).sum() / norm) for x, t in zip(g, tilde)]) @ P.T
    np.testing.assert_allclose(theta_g, -rho * ghat_g, rtol=1e-10, atol=1e-14 * np.abs(theta_g).max())
    assert np.abs(theta_g).max() > 1e-6  # a real first-order term, not 0 = 0


@pytest.mark.parametrize("family", [RELU, CNN, MF], ids=["mlp-relu-bias", "cnn-bias", "mf"])
def test_sam_law_is_exact_and_balances(family: Family) -> None:
    optim = OptimConfig(name="sam", lr=0.05, rho=0.2, weight_decay=0.01)
    df = train_frame(make_config(family, optim=optim, steps=40, seed=3))
    assert law_residual(df) <= 1e-10


def test_sam_with_rho_zero_is_gd() -> None:
    """(The per-unit columns differ: SAM's per-unit law is not carried, so they are NaN.)"""
    config = make_config(RELU, optim=OptimConfig(name="sam", lr=0.05, rho=0.0), steps=10)
    sam, gd = train_frame(config), train_frame(config.replace(**{"optim.name": "gd"}))
    unit = ["pred_neuron_drift_max", "pred_neuron_drift_mean", "identity_residual"]
    assert sam[unit].iloc[1:].isna().all().all()
    pd.testing.assert_frame_equal(sam.drop(columns=unit), gd.drop(columns=unit), check_exact=True)


# --- sharpness and the stability bound ---------------------------------------------------------------------------


def _exact_top(config: RunConfig, engine: Engine) -> float:
    """The full Hessian's largest eigenvalue at member 0's current weights (torch.autograd.functional.hessian)."""
    model = build_model(config, engine.tasks[0], torch.Generator().manual_seed(config.seed), torch.float64)
    with torch.no_grad():
        for p, w in zip(model.params, engine.weights(0)):
            p.copy_(w.reshape(p.shape))
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.params]

    def loss(v: torch.Tensor) -> torch.Tensor:
        parts = [x.reshape(p.shape) for x, p in zip(torch.split(v, sizes), model.params)]
        return objective_at(model, dict(zip(names, parts)), engine.tasks[0])

    flat = torch.cat([p.detach().reshape(-1) for p in model.params])
    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


@pytest.mark.parametrize("family", [RELU, MF], ids=["mlp-relu-bias", "mf"])
def test_sharpness_is_the_hessian_top_eigenvalue(family: Family) -> None:
    """Exact for a small model: the full Hessian's largest eigenvalue at steps 0, 3 and 6 (the last), NaN between."""
    config = make_config(family, steps=6, seed=4).replace(sharpness_every=3)
    engine = Engine([config])
    rows: list[np.ndarray] = []
    exact = []
    while engine.running:
        if engine.step_index % 3 == 0:
            exact.append(_exact_top(config, engine))
        rows += engine.step().get(0, [])
    exact.append(_exact_top(config, engine))  # the last step's row is logged with step 5's
    df = pd.DataFrame(np.array(rows), columns=engine.columns)
    got = df["sharpness"].dropna().to_numpy()
    assert df["sharpness"].isna().sum() == 4 and len(got) == 3
    np.testing.assert_allclose(got, exact, rtol=1e-10)
    np.testing.assert_allclose(df["stability_bound"], 2 / df["lr"], rtol=0)


def objective_at(model: torch.nn.Module, weights: dict[str, torch.Tensor], task: object) -> torch.Tensor:
    """The objective with ``weights`` in place of the module's parameters (for torch.func.hessian)."""
    from torch.func import functional_call

    from balance.engine.networks import member_losses

    if task.inputs is None:  # type: ignore[attr-defined]
        R = functional_call(model, weights, ()) - task.targets  # type: ignore[attr-defined]
        return 0.5 * (R * R).sum()
    out = functional_call(model, weights, (task.inputs,))  # type: ignore[attr-defined]
    return member_losses(out[None], task.targets, task.loss)[0]  # type: ignore[attr-defined]


def test_sharpness_is_off_by_default() -> None:
    df = train_frame(make_config(RELU, steps=3))
    assert df["sharpness"].isna().all()


RANK1 = {"name": "lowrank", "d1": 10, "d2": 10, "rank": 1, "singular_values": [1.0]}


@pytest.mark.parametrize("lr", [0.05, 0.3, 0.6, 0.75])
def test_stability_bound_on_converged_runs(lr: float) -> None:
    """Rank-1 MF from an unbalanced start (||U||^2 ~ 4, ||V||^2 ~ 0.01; Wang et al. 2022, formula sheet E12): every
    run that converges ends at sharpness <= 2/eta; the larger the step, the flatter and more balanced the minimum it
    can end at (final ||U|| / ||V||: 3.13 at eta = 0.05, 1.89 at 0.75)."""
    config = RunConfig.from_dict(
        {
            "data": RANK1,
            "model": {"name": "mf", "init_scale": 0.6325, "layer_scales": [0.05, 1.0]},
            "optim": {"name": "gd", "lr": lr},
            "steps": 4000,
            "log_every": 100,
            "sharpness_every": 4000,
        }
    )
    df = train_frame(config)
    assert df["loss"].iloc[-1] < 1e-12  # converged
    last = df.dropna(subset=["sharpness"]).iloc[-1]
    assert last["sharpness"] <= last["stability_bound"] * (1 + 1e-9)
    BALANCE.append((lr, float(last["ratio_1"]), float(last["sharpness"])))


BALANCE: list[tuple[float, float, float]] = []


def test_large_steps_end_more_balanced() -> None:
    if len(BALANCE) < 4:
        pytest.skip("needs the stability-bound runs (same module)")
    ratios = [abs(np.log(r)) for _, r, _ in sorted(BALANCE)]
    assert ratios[-1] < 0.6 * ratios[0]  # log 1.89 = 0.64 against log 3.13 = 1.14
