"""Oracle tests of the conservation laws (formula sheet, sections 3.1 - 3.3 and 3.5), float64 and autograd.

Every identity is checked on random instances of every homogeneous family, with random (nonzero) biases, against
quantities computed here from the modules with plain tensor ops: nothing in this file reuses the trainer or the
theory module. Tolerances are relative to the size of the terms involved (the round-off scale).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    BATCH_NORM,
    FAMILIES,
    FAMILY_IDS,
    FEW,
    TANH,
    Family,
    dot,
    explicit_layers,
    explicit_neurons,
    family_configs,
    instance,
    make_config,
    objective,
    sq,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call

from balance.engine.invariants import (
    gaps,
    incoming_matrix,
    incoming_sqnorms,
    matrix_invariant,
    neuron_balance,
    outgoing_sqnorms,
    ratios,
    rescale,
    sqnorm,
)
from balance.engine.models import HomogeneousModel

LINEAR_FAMILIES = [f for f in FAMILIES if f.linear]


def _close(a: float, b: float, scale: float, rtol: float = 1e-10) -> bool:
    """|a - b| <= rtol * scale, where ``scale`` bounds the magnitude of the terms that were summed."""
    return abs(float(a) - float(b)) <= rtol * float(scale) + 1e-300


def _step(params: list[Tensor], grads: list[Tensor], eta: float) -> list[Tensor]:
    return [p.detach() - eta * g for p, g in zip(params, grads)]


def _output(model: HomogeneousModel, tensors: list[Tensor], x: Tensor | None) -> Tensor:
    names = [name for name, _ in model.named_parameters()]
    return functional_call(model, dict(zip(names, tensors)), () if x is None else (x,))


# --- 1. Euler identity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@FEW
@given(data=st.data())
def test_euler_identity_per_layer(family: Family, data: st.DataObject) -> None:
    """<W_h, dL/dW_h> + <b_h, dL/db_h> = <W_{h+1}, dL/dW_{h+1}> for every hidden layer h (b_{h+1} not on the right)."""
    inst = instance(data.draw(family_configs(family)))
    layers = explicit_layers(inst.model)
    grads = explicit_layers(inst.model, inst.grads())
    for h in range(len(layers) - 1):
        (W, b), (Wn, _) = layers[h], layers[h + 1]
        (G, gb), (Gn, _) = grads[h], grads[h + 1]
        lhs = dot(W, G) + (dot(b, gb) if b is not None else 0.0)
        rhs = dot(Wn, Gn)
        scale = (W * G).abs().sum() + (Wn * Gn).abs().sum() + ((b * gb).abs().sum() if b is not None else 0.0)
        assert _close(lhs, rhs, scale), (h, float(lhs), float(rhs))


@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
@FEW
@given(data=st.data())
def test_euler_identity_per_neuron(family: Family, data: st.DataObject) -> None:
    """Unit i: <row i of W_h, its gradient> + b_h[i] g_b[i] = <column i of W_{h+1}, its gradient>.

    Conv: filter i (+ bias) against input channel i of the next conv, or the head's block of channel i.
    BatchNorm: (gamma_i, beta_i) against column i of W_{h+1}.
    """
    inst = instance(data.draw(family_configs(family)))
    units = explicit_neurons(inst.model)
    grad_units = explicit_neurons(inst.model, inst.grads())
    for layer, grad_layer in zip(units, grad_units):
        for (into, out), (g_into, g_out) in zip(layer, grad_layer):
            lhs = sum(dot(t, g) for t, g in zip(into, g_into))
            rhs = dot(out, g_out)
            scale = sum((t * g).abs().sum() for t, g in zip(into, g_into)) + (out * g_out).abs().sum()
            assert _close(lhs, rhs, scale), (float(lhs), float(rhs))


def test_euler_identity_needs_the_hidden_bias_and_only_it() -> None:
    """Sensitivity: dropping <b_h, g_b_h>, or adding <b_{h+1}, g_b_{h+1}> on the right, breaks the identity."""
    inst = instance(make_config(FAMILIES[FAMILY_IDS.index("mlp-relu-bias")], seed=3))
    layers, grads = explicit_layers(inst.model), explicit_layers(inst.model, inst.grads())
    (W, b), (Wn, bn) = layers[0], layers[1]
    (G, gb), (Gn, gbn) = grads[0], grads[1]
    right = float(dot(Wn, Gn))
    assert abs(float(dot(W, G) + dot(b, gb)) - right) < 1e-13
    assert abs(float(dot(W, G)) - right) > 1e-3
    assert abs(float(dot(W, G) + dot(b, gb)) - right - float(dot(bn, gbn))) > 1e-3


def test_tanh_breaks_the_euler_identity() -> None:
    inst = instance(make_config(TANH, seed=1))
    layers, grads = explicit_layers(inst.model), explicit_layers(inst.model, inst.grads())
    for h in range(len(layers) - 1):
        (W, b), (Wn, _) = layers[h], layers[h + 1]
        (G, gb), (Gn, _) = grads[h], grads[h + 1]
        residual = float(dot(W, G) + dot(b, gb) - dot(Wn, Gn))
        assert abs(residual) > 1e-3 * float((Wn * Gn).abs().sum())


def test_batch_norm_moves_the_symmetry_to_gamma_and_beta() -> None:
    """Every BN'd layer is scale-invariant per unit: <w_i, g_i> + b_i g_b_i ~ 0. Not exactly: BN divides by
    sqrt(var + eps), so scaling w_i by c changes the output by a relative O(eps / var) ~ 1e-5, hence the loose
    tolerance. The output layer is not BN'd, so <W_L, G_L> = sum_i gamma_i g_gamma_i + beta_i g_beta_i != 0 and
    the layer-level identity of the last pair fails at first order, while (gamma, beta) vs W_{h+1} holds exactly
    (test_euler_identity_per_neuron)."""
    inst = instance(make_config(BATCH_NORM, seed=2))
    model = inst.model
    layers, grads = explicit_layers(model), explicit_layers(model, inst.grads())
    for h in range(len(layers) - 1):
        (W, b), (G, gb) = layers[h], grads[h]
        radial = (W * G).sum(dim=1) + b * gb  # per unit, ~0 by scale invariance
        size = torch.sqrt((W * W).sum(dim=1) + b * b) * torch.sqrt((G * G).sum(dim=1) + gb * gb)
        assert bool((radial.abs() <= 1e-3 * size).all())
    (W, b), (Wn, _) = layers[-2], layers[-1]
    (G, gb), (Gn, _) = grads[-2], grads[-1]
    residual = float(dot(W, G) + dot(b, gb) - dot(Wn, Gn))
    assert abs(residual) > 1e-2 * float((Wn * Gn).abs().sum())


# --- 2. One GD step changes each invariant by exactly eta^2 (...) -----------------------------------------------


def _gap(layers: list[tuple[Tensor, Tensor | None]], h: int) -> Tensor:
    """||W_{h+1}||^2 - ||W_h||^2 - ||b_h||^2."""
    (W, b), (Wn, _) = layers[h], layers[h + 1]
    return sq(Wn) - sq(W) - (sq(b) if b is not None else 0.0)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@FEW
@given(data=st.data(), eta=st.sampled_from([0.05, 0.3, 1.0]))
def test_gd_step_changes_each_layer_gap_by_eta_squared(family: Family, data: st.DataObject, eta: float) -> None:
    """G' - G = eta^2 (||g_{h+1}||^2 - ||g_h||^2 - ||g_{b_h}||^2): the first-order term vanishes by Euler."""
    inst = instance(data.draw(family_configs(family)))
    params, grads = [p.detach() for p in inst.model.params], inst.grads()
    new = _step(params, grads, eta)
    before, after = explicit_layers(inst.model, params), explicit_layers(inst.model, new)
    g = explicit_layers(inst.model, grads)
    for h in range(len(before) - 1):
        change = _gap(after, h) - _gap(before, h)
        predicted = eta**2 * _gap(g, h)
        scale = sum(sq(t) for pair in (*before[h : h + 2], *after[h : h + 2]) for t in pair if t is not None)
        assert _close(change, predicted, 1e-2 * scale + abs(predicted)), (h, float(change), float(predicted))


@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
@FEW
@given(data=st.data(), eta=st.sampled_from([0.05, 0.3, 1.0]))
def test_gd_step_changes_each_neuron_balance_by_eta_squared(family: Family, data: st.DataObject, eta: float) -> None:
    """B_i' - B_i = eta^2 (||g_in,i||^2 - ||g_out,i||^2), B_i = ||w_in,i||^2 - ||w_out,i||^2 (biases in w_in)."""
    inst = instance(data.draw(family_configs(family)))
    params, grads = [p.detach() for p in inst.model.params], inst.grads()
    new = _step(params, grads, eta)

    def balances(tensors: list[Tensor]) -> list[Tensor]:
        layers = explicit_neurons(inst.model, tensors)
        return [torch.stack([sum(sq(t) for t in into) - sq(out) for into, out in units]) for units in layers]

    for B, B_new, gB in zip(balances(params), balances(new), balances(grads)):
        scale = 1e-2 * (B.abs().sum() + B_new.abs().sum()) + (eta**2 * gB).abs().sum()
        assert float((B_new - B - eta**2 * gB).abs().max()) <= 1e-10 * float(scale)


def test_wrong_bias_grouping_drifts_at_first_order() -> None:
    """Sensitivity of the step identity: the gap that leaves out b_h, or charges b_{h+1} to layer h, moves by far
    more than eta^2 times its gradient expression."""
    inst = instance(make_config(FAMILIES[FAMILY_IDS.index("mlp-relu-bias")], seed=4))
    eta = 0.1
    params, grads = [p.detach() for p in inst.model.params], inst.grads()
    before = explicit_layers(inst.model, params)
    after = explicit_layers(inst.model, _step(params, grads, eta))
    g = explicit_layers(inst.model, grads)
    no_bias = lambda ls: sq(ls[1][0]) - sq(ls[0][0])  # noqa: E731
    both = lambda ls: sq(ls[1][0]) + sq(ls[1][1]) - sq(ls[0][0]) - sq(ls[0][1])  # noqa: E731
    for wrong in (no_bias, both):
        assert abs(float(wrong(after) - wrong(before) - eta**2 * wrong(g))) > 1e-4
    assert abs(float(_gap(after, 0) - _gap(before, 0) - eta**2 * _gap(g, 0))) < 1e-13


@FEW
@given(
    d1=st.integers(1, 7),
    d2=st.integers(1, 7),
    r=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    eta=st.sampled_from([0.01, 0.1, 0.5]),
)
def test_mf_matrix_invariant_step(d1: int, d2: int, r: int, seed: int, eta: float) -> None:
    """U'^T U' - V'^T V' = U^T U - V^T V + eta^2 (G_U^T G_U - G_V^T G_V), with the closed-form gradients
    G_U = (U V^T - M) V, G_V = (U V^T - M)^T U (checked against autograd)."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(d1, r, generator=gen, dtype=torch.float64)
    V = torch.randn(d2, r, generator=gen, dtype=torch.float64)
    M = torch.randn(d1, d2, generator=gen, dtype=torch.float64)
    R = U @ V.T - M
    G_U, G_V = R @ V, R.T @ U
    Ua, Va = U.clone().requires_grad_(), V.clone().requires_grad_()
    auto_U, auto_V = torch.autograd.grad(0.5 * ((Ua @ Va.T - M) ** 2).sum(), (Ua, Va))
    torch.testing.assert_close(auto_U, G_U, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(auto_V, G_V, rtol=1e-12, atol=1e-12)
    U2, V2 = U - eta * G_U, V - eta * G_V
    lhs = U2.T @ U2 - V2.T @ V2
    rhs = U.T @ U - V.T @ V + eta**2 * (G_U.T @ G_U - G_V.T @ G_V)
    scale = float(sq(U) + sq(V) + sq(U2) + sq(V2))
    assert float((lhs - rhs).abs().max()) <= 1e-13 * scale


@pytest.mark.parametrize("family", LINEAR_FAMILIES, ids=[f.id for f in LINEAR_FAMILIES])
@FEW
@given(data=st.data(), eta=st.sampled_from([0.05, 0.3]))
def test_matrix_invariant_step_identity_linear(family: Family, data: st.DataObject, eta: float) -> None:
    """Identity activations: D_h = W_{h+1}^T W_{h+1} - A A^T with A = [W_h b_h] changes by
    eta^2 (G_{h+1}^T G_{h+1} - G_A G_A^T) (mf: D = U^T U - V^T V), and the library's matrix_invariant is D."""
    inst = instance(data.draw(family_configs(family)))
    model = inst.model
    params, grads = [p.detach() for p in model.params], inst.grads()
    new = _step(params, grads, eta)

    def D(tensors: list[Tensor], h: int) -> Tensor:
        layers = explicit_layers(model, tensors)
        (W, b), (Wn, _) = layers[h], layers[h + 1]
        A = W if b is None else torch.cat([W, b[:, None]], dim=1)
        return Wn.T @ Wn - A @ A.T

    for h, group in enumerate(model.neurons):
        assert group.linear and group.layer == h
        torch.testing.assert_close(matrix_invariant(params, group), D(params, h), rtol=0, atol=1e-13)
        change, predicted = D(new, h) - D(params, h), eta**2 * D(grads, h)
        scale = float(sum(sq(t) for t in params) + sum(sq(t) for t in new))
        assert float((change - predicted).abs().max()) <= 1e-13 * scale


def test_mf_regulariser_breaks_the_gap_at_first_order_by_its_closed_form() -> None:
    """With lambda/8 ||U^T U - V^T V||^2 the Euler term is lambda/2 tr((U^T U + V^T V) D) != 0, D = U^T U - V^T V,
    so one step moves the gap by -2 eta lambda/2 tr(...) + eta^2 (...): the regulariser is what balances."""
    family = FAMILIES[FAMILY_IDS.index("mf")]
    inst = instance(make_config(family, model={"regularizer": 2.0, "init_scale": 0.7}, seed=5))
    model, lam, eta = inst.model, 2.0, 0.05
    params = [p.detach() for p in model.params]
    grads = list(torch.autograd.grad(objective(model, inst.task) + model.penalty(), model.params))
    Vt, U = params
    gVt, gU = grads
    D = U.T @ U - Vt @ Vt.T
    euler = dot(U, gU) - dot(Vt, gVt)
    torch.testing.assert_close(euler, lam / 2 * torch.trace((U.T @ U + Vt @ Vt.T) @ D), rtol=1e-12, atol=0)
    assert abs(float(euler)) > 1e-2
    new = _step(params, grads, eta)
    gap = lambda t: sq(t[1]) - sq(t[0])  # noqa: E731
    predicted = -2 * eta * euler + eta**2 * gap(grads)
    torch.testing.assert_close(gap(new) - gap(params), predicted, rtol=1e-12, atol=1e-13)


# --- 3. Rescaling symmetry -------------------------------------------------------------------------------------


def _unit_rescale(model: HomogeneousModel, params: list[Tensor], c: list[Tensor]) -> list[Tensor]:
    """Unit i of hidden group k: incoming * c[k][i], outgoing / c[k][i] (a head's block of a channel shares it)."""
    out = list(params)
    for group, ck in zip(model.neurons, c):
        for index in group.incoming:
            p = out[index]
            out[index] = p * ck.reshape(-1, *([1] * (p.ndim - 1)))
        W = out[group.outgoing]
        factor = ck.repeat_interleave(W.shape[1] // group.count)
        out[group.outgoing] = W / factor.reshape(1, -1, *([1] * (W.ndim - 2)))
    return out


@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
@FEW
@given(data=st.data(), c=st.sampled_from([0.25, 3.0]))
def test_rescaling_leaves_the_output_unchanged(family: Family, data: st.DataObject, c: float) -> None:
    """invariants.rescale (layer h's incoming weights and bias times c, W_{h+1} over c), one layer at a time, and
    a different positive factor for every unit at once: the network computes the same function."""
    inst = instance(data.draw(family_configs(family)))
    model, x = inst.model, inst.task.inputs
    params = [p.detach() for p in model.params]
    with torch.no_grad():
        f = _output(model, params, x)
        scale = float(f.abs().max()) + 1e-300
        for group in model.neurons:
            scaled = rescale(params, group, c)
            changed = {i for i, (a, b) in enumerate(zip(params, scaled)) if a is not b}
            assert changed == {*group.incoming, group.outgoing}
            assert float((_output(model, scaled, x) - f).abs().max()) <= 1e-12 * scale
        gen = torch.Generator().manual_seed(inst.config.seed)
        factors = [0.2 + 3 * torch.rand(g.count, generator=gen, dtype=torch.float64) for g in model.neurons]
        per_unit = _unit_rescale(model, params, factors)
        assert float((_output(model, per_unit, x) - f).abs().max()) <= 1e-12 * scale


def test_rescaling_changes_the_tanh_network() -> None:
    """Control: tanh is not homogeneous, so the same rescaling changes the output."""
    inst = instance(make_config(TANH, seed=0))
    model, x = inst.model, inst.task.inputs
    params = [p.detach() for p in model.params]
    with torch.no_grad():
        f = _output(model, params, x)
        for group in model.neurons:
            assert float((_output(model, rescale(params, group, 3.0), x) - f).abs().max()) > 1e-2 * float(f.abs().max())


# --- the library's invariant functions against explicit computations -----------------------------------------


@pytest.mark.parametrize("as_numpy", [False, True], ids=["torch", "numpy"])
@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
@FEW
@given(data=st.data())
def test_invariant_functions_match_explicit(family: Family, as_numpy: bool, data: st.DataObject) -> None:
    inst = instance(data.draw(family_configs(family)))
    model = inst.model
    params = [p.detach() for p in model.params]
    arrays = [p.numpy() for p in params] if as_numpy else params
    layers = explicit_layers(model, params)
    sqn = [float(sq(W)) for W, _ in layers]
    bsq = [0.0 if b is None else float(sq(b)) for _, b in layers]
    assert [sqnorm(arrays[layer.weight]) for layer in model.layers] == pytest.approx(sqn, rel=1e-14)
    expected_gaps = [sqn[h + 1] - sqn[h] - bsq[h] for h in range(len(sqn) - 1)]
    assert gaps(sqn, bsq) == pytest.approx(expected_gaps, rel=1e-14, abs=1e-14)
    assert ratios(sqn) == pytest.approx([(sqn[h + 1] / sqn[h]) ** 0.5 for h in range(len(sqn) - 1)], rel=1e-14)
    for group, units in zip(model.neurons, explicit_neurons(model, params)):
        ins = np.array([sum(float(sq(t)) for t in into) for into, _ in units])
        outs = np.array([float(sq(out)) for _, out in units])
        np.testing.assert_allclose(np.asarray(incoming_sqnorms(arrays, group)), ins, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(outgoing_sqnorms(arrays, group)), outs, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(neuron_balance(arrays, group)), ins - outs, rtol=1e-12, atol=1e-13)
        if group.linear:
            D = np.asarray(matrix_invariant(arrays, group))
            np.testing.assert_allclose(D, D.T, atol=1e-14)
            np.testing.assert_allclose(np.diag(D), outs - ins, rtol=1e-12, atol=1e-13)
            assert np.trace(D) == pytest.approx(expected_gaps[group.layer], rel=1e-12, abs=1e-13)
            A = np.asarray(incoming_matrix(arrays, group))
            assert A.shape == (group.count, sum(np.asarray(arrays[i])[0].size for i in group.incoming))
    assert all(g.linear == family.linear for g in model.neurons)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["torch", "numpy"])
@pytest.mark.parametrize("family", [*FAMILIES, BATCH_NORM], ids=[*FAMILY_IDS, BATCH_NORM.id])
def test_stacked_invariant_functions_equal_each_members(family: Family, as_numpy: bool) -> None:
    """``stacked=True`` (the engine's metrics over K runs [K, ...]) gives row i = the function of run i."""
    runs = [[p.detach() for p in instance(make_config(family, seed=s)).model.params] for s in (1, 2, 3)]
    model = instance(make_config(family)).model
    stacked = [torch.stack(ts) for ts in zip(*runs)]
    convert = (lambda ts: [t.numpy() for t in ts]) if as_numpy else (lambda ts: ts)
    for group in model.neurons:
        functions = [incoming_sqnorms, outgoing_sqnorms, neuron_balance, incoming_matrix]
        functions += [matrix_invariant] if group.linear else []
        for f in functions:
            together = np.asarray(f(convert(stacked), group, stacked=True))
            for i, run in enumerate(runs):
                np.testing.assert_allclose(together[i], np.asarray(f(convert(run), group)), rtol=1e-13, atol=1e-14)


def test_rescale_touches_only_its_group() -> None:
    """rescale returns new tensors for the group and the very same objects for every other parameter."""
    inst = instance(make_config(FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]))
    params = [p.detach() for p in inst.model.params]
    group = inst.model.neurons[1]
    scaled = rescale(params, group, 2.0)
    for i, (a, b) in enumerate(zip(params, scaled)):
        if i in group.incoming:
            torch.testing.assert_close(b, 2 * a, rtol=0, atol=0)
        elif i == group.outgoing:
            torch.testing.assert_close(b, a / 2, rtol=0, atol=0)
        else:
            assert a is b
