"""The config layer: one frozen ``RunConfig`` (``schema``), its text forms (``codecs``: errors, CLI / URL / TOML
values) and the presets. No torch: choices come from the torch-free registry ``balance.engine.laws``."""

from balance.config.codecs import MAX_MESSAGE, MAX_TEXT, ConfigError, clip, loads_toml
from balance.config.settings import (
    ACTIVATIONS,
    SECTIONS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    applicable,
    choices_of,
    link_query,
    parse_value,
    schema,
)

__all__ = [
    "ACTIVATIONS",
    "MAX_MESSAGE",
    "MAX_TEXT",
    "SECTIONS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "applicable",
    "choices_of",
    "clip",
    "link_query",
    "loads_toml",
    "parse_value",
    "schema",
]
