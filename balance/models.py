"""Moved to ``balance.engine.models``; this shim keeps the old import path working."""

from balance.engine.models import (
    ACTIVATION_FUNCTIONS,
    CNN,
    MLP,
    MODELS,
    HomogeneousModel,
    Layer,
    MatrixFactorisation,
    ModelEntry,
    Neurons,
    build_model,
    initialise,
)

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "CNN",
    "MLP",
    "MODELS",
    "HomogeneousModel",
    "Layer",
    "MatrixFactorisation",
    "ModelEntry",
    "Neurons",
    "build_model",
    "initialise",
]
