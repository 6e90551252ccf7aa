"""The settings a researcher could not set before: bias initialisation, BatchNorm's eps, max- or average-pooling and
images with 1 or 3 channels; each goes through the one config into the one engine, and the laws still hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import BATCH_NORM, FAMILIES, FAMILY_IDS, IMAGES, law_residual, make_config, train_frame

from balance.config import ConfigError, DataConfig, OptimConfig, RunConfig
from balance.engine.data import make_task
from balance.engine.engine import Engine
from balance.engine.models import build_model
from balance.engine.networks import objective
from balance.runs.limits import estimate

RELU_BIAS = FAMILIES[FAMILY_IDS.index("mlp-relu-bias")]
CNN = FAMILIES[FAMILY_IDS.index("cnn")]


def _model(config: RunConfig) -> torch.nn.Module:
    task = make_task(config.data, torch.float64, image_input=config.model.name == "cnn")
    return build_model(config, task, torch.Generator().manual_seed(config.seed), torch.float64), task


def test_biases_drawn_like_the_weights_keep_the_weights_and_the_law() -> None:
    zero = make_config(RELU_BIAS, seed=5, model={"init_scale": 0.4})
    drawn = zero.replace(**{"model.bias_init": "weights"})
    (m0, _), (m1, _) = _model(zero), _model(drawn)
    for layer in m0.layers:
        torch.testing.assert_close(m0.params[layer.weight], m1.params[layer.weight], rtol=0, atol=0)
        assert not m0.params[layer.bias].any()
        assert m1.params[layer.bias].abs().min() > 0
    biases = torch.cat([m1.params[layer.bias].detach() for layer in m1.layers])
    assert 0.2 < float(biases.std()) < 0.7  # sigma = 0.4 over 4 + 4 + 2 entries
    assert law_residual(train_frame(drawn.replace(steps=30))) <= 1e-10


def test_bias_init_is_refused_where_it_cannot_apply() -> None:
    config = make_config(RELU_BIAS).replace(**{"model.bias_init": "weights"})
    assert "model.bias_init" in config.to_query()
    with pytest.raises(ConfigError, match="not one of zero, weights"):
        config.replace(**{"model.bias_init": "ones"})


def test_batch_norm_eps_sets_how_exact_the_scale_invariance_is() -> None:
    """<w_i, g_i> = 0 for a BatchNorm'd unit up to eps: cos(w_i, g_i) ~ 1e-5 at eps = 1e-5, round-off at 1e-30."""
    worst = {}
    for eps in (1e-5, 1e-30):
        config = make_config(BATCH_NORM, seed=2, model={"bn_eps": eps})
        model, task = _model(config)
        assert model.bn_eps == eps and model.norms[0].eps == eps
        grads = torch.autograd.grad(objective(model, task), model.params)
        W, G = model.params[model.layers[0].weight].detach(), grads[model.layers[0].weight]
        cos = (W * G).sum(1) / (W.norm(dim=1) * G.norm(dim=1))
        worst[eps] = float(cos.abs().max())
    assert worst[1e-30] < 1e-12 < 1e-8 < worst[1e-5]


def test_max_pooling_is_used_and_keeps_the_law() -> None:
    config = make_config(CNN, seed=1, steps=20).replace(**{"model.pooling": "max"})
    model, task = _model(config)
    conv, head = model.convs, model.head
    z = task.inputs
    for c in conv:
        z = F.max_pool2d(F.relu(c(z)), 2)
    torch.testing.assert_close(model(task.inputs), head(z.flatten(1)))
    assert not torch.allclose(model(task.inputs), _model(config.replace(**{"model.pooling": "avg"}))[0](task.inputs))
    assert law_residual(train_frame(config)) <= 1e-10


def test_images_with_three_channels() -> None:
    grey = make_task(DataConfig(name="images", samples=16, image_size=6, seed=3), torch.float64, image_input=True)
    # the numbers a grey set always had (measured before the setting existed): adding it changed nothing
    assert float(grey.inputs.sum()) == pytest.approx(81.24811466517816, rel=1e-14)
    assert float((grey.inputs**2).sum()) == pytest.approx(82.28013273931424, rel=1e-14)
    rgb = make_task(DataConfig(name="images", samples=16, image_size=6, seed=3, channels=3), torch.float64, True)
    assert rgb.inputs.shape == (16, 3, 6, 6) and rgb.input_shape == (3, 6, 6)
    config = make_config(CNN, steps=15, data={**IMAGES, "channels": 3})
    assert law_residual(train_frame(config)) <= 1e-10
    assert estimate(config).memory > estimate(config.replace(**{"data.channels": 1})).memory
    with pytest.raises(ConfigError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        config.replace(**{"data.channels": 2})


def test_new_settings_reach_an_mlp_on_rgb_images() -> None:
    config = RunConfig.from_dict(
        {
            "data": {"name": "images", "samples": 8, "image_size": 4, "channels": 3},
            "model": {"name": "mlp", "depth": 2, "width": 3},
            "optim": {"name": "gd", "lr": 0.05},
            "steps": 3,
        }
    )
    assert Engine([config]).model.input_dim == 48
    assert isinstance(OptimConfig().layer_lrs, tuple)


def test_estimates_count_sam_and_the_sharpness() -> None:
    base = make_config(RELU_BIAS, steps=1000)
    sam = base.replace(**{"optim.name": "sam"})
    sharp = base.replace(sharpness_every=10)
    assert estimate(sam).seconds > 1.3 * estimate(base).seconds
    assert estimate(sam).memory > estimate(base).memory
    assert estimate(sharp).seconds > 3 * estimate(base).seconds and estimate(sharp).memory > estimate(base).memory
