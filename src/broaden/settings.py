"""Build settings dataclasses from parsed TOML/YAML/JSON mappings, rejecting unknown keys by name."""
from __future__ import annotations

import dataclasses
from typing import TypeVar

from broaden.errors import ConfigError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: object, where: str) -> T:
    """``cls(**values)``, with a :class:`ConfigError` naming ``where`` for a non-mapping or unknown keys.

    A typo in a config file must fail loudly instead of silently falling back to a default.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from exc
