"""Tests of balance.engine.models: the layer / neuron protocol against the modules, homogeneity, MF, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    BATCH_NORM,
    FAMILIES,
    FAMILY_IDS,
    FEW,
    TANH,
    Family,
    explicit_layers,
    family_configs,
    instance,
    make_config,
)
from hypothesis import given
from hypothesis import strategies as st

from balance.config import DataConfig, ModelConfig, RunConfig
from balance.engine.data import make_task
from balance.engine.models import MODELS, MatrixFactorisation, build_model, initialise

ALL = [*FAMILIES, BATCH_NORM, TANH]
ALL_IDS = [f.id for f in ALL]


def test_registry() -> None:
    assert list(MODELS) == ["mf", "linear", "mlp", "cnn"]
    assert [name for name, entry in MODELS.items() if entry.image_input] == ["cnn"]
    assert all(entry.help for entry in MODELS.values())


@pytest.mark.parametrize("family", ALL, ids=ALL_IDS)
@FEW
@given(data=st.data())
def test_protocol_matches_the_modules(family: Family, data: st.DataObject) -> None:
    """``layers`` names W_h, b_h in order; ``neurons`` indexes units by dim 0 of incoming, dim 1 of outgoing."""
    inst = instance(data.draw(family_configs(family)))
    model, cfg = inst.model, inst.config.model
    params = model.params
    assert [id(p) for p in params] == [id(p) for p in model.parameters()]
    explicit = [(id(W), id(b)) for W, b in explicit_layers(model, list(params))]
    named = [
        (id(params[layer.weight]), id(None if layer.bias is None else params[layer.bias])) for layer in model.layers
    ]
    assert named == explicit
    assert [id(w) for w in model.weights()] == [W for W, _ in explicit]
    assert all((layer.bias is not None) == family.bias for layer in model.layers)
    assert len(model.neurons) == len(model.layers) - 1
    widths = [cfg.rank or inst.config.data.rank] if cfg.name == "mf" else list(cfg.hidden_widths())
    for h, group in enumerate(model.neurons):
        assert (group.layer, group.count, group.outgoing) == (h, widths[h], model.layers[h + 1].weight)
        assert all(params[i].shape[0] == group.count for i in group.incoming)
        nxt = params[group.outgoing]
        head_of_cnn = cfg.name == "cnn" and h == len(model.neurons) - 1
        side = model.head.in_features // group.count if head_of_cnn else 1  # pixels per channel after pooling
        assert nxt.shape[1] == group.count * side
        if family is BATCH_NORM:
            ids = [id(p) for p in params]
            assert group.incoming == (ids.index(id(model.norms[h].weight)), ids.index(id(model.norms[h].bias)))
        else:
            assert group.incoming == tuple(i for i in (model.layers[h].weight, model.layers[h].bias) if i is not None)
        assert group.linear == family.linear
    assert model.homogeneous == (family is not TANH)


@pytest.mark.parametrize("family", ALL, ids=ALL_IDS)
def test_output_shapes(family: Family) -> None:
    inst = instance(make_config(family))
    task = inst.task
    with torch.no_grad():
        out = inst.model() if task.inputs is None else inst.model(task.inputs)
    if task.inputs is None:
        assert out.shape == task.targets.shape
    else:
        assert out.shape == (task.samples, task.output_dim)
    assert out.dtype == torch.float64


HOMOGENEOUS_NO_BIAS = [f for f in FAMILIES if not f.bias]


@pytest.mark.parametrize("family", HOMOGENEOUS_NO_BIAS, ids=[f.id for f in HOMOGENEOUS_NO_BIAS])
def test_positive_homogeneity_of_degree_depth(family: Family) -> None:
    """Without biases f(c W_1, ..., c W_L) = c^L f(W) for c > 0 (phi(c z) = c phi(z), pooling linear)."""
    inst = instance(make_config(family, seed=7))
    model, x = inst.model, inst.task.inputs
    args = () if x is None else (x,)
    c, L = 1.7, len(model.layers)
    with torch.no_grad():
        f = model(*args)
        for p in model.params:
            p.mul_(c)
        torch.testing.assert_close(model(*args), c**L * f, rtol=1e-12, atol=0)


def test_tanh_is_not_homogeneous() -> None:
    inst = instance(make_config(TANH, seed=7, model={"bias": False}))
    x = inst.task.inputs
    with torch.no_grad():
        f = inst.model(x)
        for p in inst.model.params:
            p.mul_(1.7)
        assert float((inst.model(x) - 1.7**3 * f).abs().max()) > 1e-2


def test_matrix_factorisation_layout() -> None:
    """Layer 1 is V^T [r, d2], layer 2 is U [d1, r]; the prediction is U V^T."""
    model = MatrixFactorisation(5, 3, 2).double()
    with torch.no_grad():
        for p in model.params:
            p.normal_()
    assert model.W1.shape == (2, 3) and model.W2.shape == (5, 2)
    torch.testing.assert_close(model.V, model.W1.T)
    torch.testing.assert_close(model.U, model.W2)
    torch.testing.assert_close(model(), model.U @ model.V.T)
    assert [layer.name for layer in model.layers] == ["V", "U"]


@pytest.mark.parametrize("regularizer", [0.0, 0.5])
def test_matrix_factorisation_penalty(regularizer: float) -> None:
    """penalty() = lambda/8 ||U^T U - V^T V||_F^2 (the closed-form gradients are tested in test_mf.py)."""
    model = MatrixFactorisation(5, 3, 2, regularizer).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.params:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    U, V = model.U.detach(), model.V.detach()
    D = U.T @ U - V.T @ V
    assert float(model.penalty().detach()) == pytest.approx(regularizer / 8 * float((D * D).sum()), rel=1e-13, abs=0)


# --- 10. initialisation ---------------------------------------------------------------------------------------


def _big(init: str, **model: object) -> RunConfig:
    """An MLP whose layers are big enough for moment estimates: W_1 [400, 300], W_2 [200, 400], W_3 [1, 200]."""
    return RunConfig(
        data=DataConfig(name="teacher", samples=4, input_dim=300),
        model=ModelConfig(name="mlp", depth=3, widths=(400, 200), init=init, **model),  # type: ignore[arg-type]
    )


def _built(config: RunConfig, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    task = make_task(config.data, dtype)
    return build_model(config, task, torch.Generator().manual_seed(seed), dtype)


@pytest.mark.parametrize("init", ["gaussian", "uniform", "orthogonal"])
def test_init_entry_std_is_init_scale_times_layer_multiplier(init: str) -> None:
    scales = (2.0, 0.5, 1.0)
    model = _built(_big(init, init_scale=0.03, layer_scales=scales, bias=True))
    for (W, b), m in zip(explicit_layers(model), scales):
        sigma = 0.03 * m
        rms = float(W.pow(2).mean().sqrt())
        n = W.numel()
        if init == "orthogonal":  # exact: a (semi-)orthogonal matrix has a fixed Frobenius norm
            assert rms == pytest.approx(sigma, rel=1e-12)
        elif n > 10_000:  # the estimate's relative std is about 1 / sqrt(2 n) < 0.8 %
            assert rms == pytest.approx(sigma, rel=0.04)
            assert abs(float(W.mean())) < 4 * sigma / math.sqrt(n)
        assert float(b.abs().max()) == 0.0


@pytest.mark.parametrize(("init", "kurtosis"), [("gaussian", 3.0), ("uniform", 1.8)])
def test_init_distribution_shape(init: str, kurtosis: float) -> None:
    """E w^4 / (E w^2)^2 is 3 for a Gaussian and 9/5 for a uniform; the uniform's support is sqrt(3) sigma."""
    W = explicit_layers(_built(_big(init, init_scale=0.1)))[0][0]
    m2, m4 = float(W.pow(2).mean()), float(W.pow(4).mean())
    assert m4 / m2**2 == pytest.approx(kurtosis, rel=0.05)
    if init == "uniform":
        assert float(W.abs().max()) <= math.sqrt(3) * 0.1
        assert float(W.abs().max()) > 0.99 * math.sqrt(3) * 0.1


NOT_MF = [f for f in ALL if f.model["name"] != "mf"]


@pytest.mark.parametrize("family", NOT_MF, ids=[f.id for f in NOT_MF])
def test_orthogonal_rows_or_columns_are_orthonormal_up_to_scale(family: Family) -> None:
    config = make_config(family, model={"init": "orthogonal", "init_scale": 0.2, "widths": (3, 6), "bias": True})
    model = _built(config)
    for W, b in explicit_layers(model):
        A = W.reshape(W.shape[0], -1)
        rows, cols = A.shape
        gram = A @ A.T if rows <= cols else A.T @ A
        expected = 0.2**2 * max(rows, cols) * torch.eye(min(rows, cols), dtype=torch.float64)
        torch.testing.assert_close(gram, expected, rtol=0, atol=1e-14)
        assert b is None or float(b.abs().max()) == 0.0
    if getattr(model, "norms", None) is not None:
        for bn in model.norms:
            assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())


def test_mf_layer_scales_apply_to_v_then_u() -> None:
    config = make_config(
        FAMILIES[0],
        data={"d1": 40, "d2": 30, "rank": 20},
        model={"init": "orthogonal", "init_scale": 0.1, "layer_scales": (3.0, 0.5)},
    )
    model = _built(config)
    assert float(model.V.detach().pow(2).mean().sqrt()) == pytest.approx(0.3, rel=1e-12)
    assert float(model.U.detach().pow(2).mean().sqrt()) == pytest.approx(0.05, rel=1e-12)
    assert model.U.shape == (40, 20)  # factor rank 0 means the target's rank


def test_init_is_seeded_and_float32_is_float64_rounded() -> None:
    config = make_config(FAMILIES[FAMILY_IDS.index("cnn-bias")])
    a, b, c = _built(config), _built(config), _built(config, seed=1)
    single = _built(config, torch.float32)
    for pa, pb, pc, ps in zip(a.parameters(), b.parameters(), c.parameters(), single.parameters()):
        assert torch.equal(pa, pb)
        assert ps.dtype == torch.float32 and torch.equal(ps, pa.float())
        assert pa.abs().sum() == 0 or not torch.equal(pa, pc)


def test_initialise_overwrites_everything_it_owns() -> None:
    """Re-initialising a trained model with the same seed restores the same weights and zero biases."""
    config = make_config(FAMILIES[FAMILY_IDS.index("mlp-relu-bias")])
    model = _built(config)
    first = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    initialise(model, config.model, torch.Generator().manual_seed(0))
    for p, q in zip(model.parameters(), first):
        assert torch.equal(p, q)
