"""Divergence advice checked against the session: never a step size known to diverge; the largest that worked."""

from __future__ import annotations

import pytest

from balance.config import RunConfig
from balance.runs.advice import divergence_advice, nice_below, settings_key

WHY = (
    "loss is inf; the loss's sharpness at the start is 3.2, so steps above 2/3.2 = 0.625 cannot be stable: "
    "try a step size of 0.2"
)


def test_the_trainer_s_advice_is_kept_when_nothing_contradicts_it() -> None:
    assert divergence_advice(WHY, 5.0, [], []) == (WHY, 0.2)


def test_advice_known_to_fail_is_never_given() -> None:
    """The old advice halved the step size: 'below 5' still diverged at 5, 2, 1 and 0.5."""
    text, offer = divergence_advice(WHY, 0.2, [], [5.0, 2.0, 1.0, 0.5])
    assert "try a step size of 0.2" not in text and offer < 0.2
    assert "η = 0.2 diverged for these settings in this session" in text
    assert text.endswith(f"try a step size of {offer:g}") and offer == 0.05


def test_the_largest_step_size_that_worked_is_offered() -> None:
    text, offer = divergence_advice(WHY, 0.2, [0.01, 0.1, 0.5], [0.2, 1.0])
    assert offer == 0.1 and "η = 0.1 worked for these settings in this session: try it" in text
    kept, offer = divergence_advice(WHY, 5.0, [0.05, 0.3], [])
    assert kept.startswith(WHY) and "η = 0.3 worked" in kept and offer == 0.3


def test_a_message_without_advice_gets_some() -> None:
    text, offer = divergence_advice("loss is nan", 1.0, [], [])
    assert text == "loss is nan: try a step size of 0.2" and offer == 0.2


@pytest.mark.parametrize(("x", "below"), [(1.0, 1.0), (0.25, 0.2), (0.19, 0.1), (3e-4, 2e-4), (0.011, 0.01)])
def test_nice_below(x: float, below: float) -> None:
    assert nice_below(x) == below


def test_settings_key_ignores_the_step_size_and_the_length() -> None:
    a = RunConfig()
    assert settings_key(a) == settings_key(a.replace(**{"optim.lr": 0.5, "steps": 10, "seed": 3}))
    assert settings_key(a) != settings_key(a.replace(**{"model.init_scale": 0.5}))
