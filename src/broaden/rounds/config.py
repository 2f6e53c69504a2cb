"""Workspace configuration: what a team sets once and every round reads (YAML or JSON, loaded safely)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from broaden.errors import ConfigError
from broaden.io import Columns
from broaden.rounds.resolve import RESOLUTIONS
from broaden.settings import dataclass_from_dict


@dataclass
class WorkspaceConfig:
    """Settings of an annotation workspace (docs/rounds.md lists every key).

    ``seed_threshold`` is τ1 (a labelled item with discrepancy d > τ1 seeds LSB), ``lookalike_threshold`` is
    τ2 (LT keeps kNN candidates with P(z=1|h) > τ2), ``k`` the neighbours per seed (DESIGN §3; ``None``
    lets the LSB strategy size it from its share of the budget).
    """

    class_names: list[str]
    strategy: str = "entropy"
    budget: int = 1000
    pool: str | None = None
    labeled: str | None = None
    eval: str | None = None
    model: str | None = None
    model_id: str | None = None
    seed_threshold: float = 0.5
    lookalike_threshold: float | None = 0.5
    k: int | None = None
    max_seeds: int | None = None
    discrepancy: str = "ordinal"
    select_options: dict = field(default_factory=dict)
    classifier: dict = field(default_factory=dict)
    seed: int = 0
    columns: dict = field(default_factory=dict)
    text_fields: list[str] | None = None
    media_fields: list[str] | None = None
    embedding_version: str | None = None
    embedding_version_col: str = "embedding_version"
    positive: list[int] | None = None
    label_studio: dict = field(default_factory=dict)
    label_resolution: str = "majority"

    def __post_init__(self) -> None:
        names = self.class_names
        if not isinstance(names, list) or len(names) < 2 or len({str(n) for n in names}) != len(names):
            raise ConfigError(f"class_names must list at least two distinct class names, got {names!r}")
        self.class_names = [str(n) for n in names]
        if not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"budget must be a positive integer, got {self.budget!r}")
        for name, low, high in (("seed_threshold", 0.0, 1.0), ("lookalike_threshold", 0.0, 1.0)):
            value = getattr(self, name)
            if value is None and name == "lookalike_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number in {low:g}..{high:g} (discrepancies and lookalike "
                                  f"scores are probabilities), got {value!r}")
        for name in ("k", "max_seeds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if self.discrepancy not in ("ordinal", "nominal"):
            raise ConfigError(f"discrepancy must be 'ordinal' or 'nominal', got {self.discrepancy!r}")
        if self.label_resolution not in RESOLUTIONS:
            raise ConfigError(f"label_resolution must be one of {', '.join(map(repr, RESOLUTIONS))} (how several "
                              f"annotators' votes become one label), got {self.label_resolution!r}")
        self._check_label_studio()
        unknown = set(self.columns) - {f.name for f in dataclasses.fields(Columns)}
        if unknown:
            raise ConfigError(f"columns: unknown key(s) {sorted(unknown)}; expected id, label, probs, embedding")

    def _check_label_studio(self) -> None:
        ls = self.label_studio
        if not isinstance(ls, dict):
            raise ConfigError(f"label_studio must be a mapping with 'url' and optionally 'project', got {ls!r}")
        secret = {k for k in ls if any(w in str(k).lower() for w in ("token", "key", "password", "secret"))}
        if secret:  # a config file is copied and committed; a token in it would leak
            raise ConfigError(f"label_studio: {sorted(secret)[0]!r} does not belong in the config file; the token is "
                              "read from the LABEL_STUDIO_API_KEY environment variable only")
        unknown = set(ls) - {"url", "project"}
        if unknown:
            raise ConfigError(f"label_studio: unknown key(s) {sorted(map(str, unknown))}; expected url, project")
        url, project = ls.get("url"), ls.get("project")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ConfigError(f"label_studio.url must be an http(s) URL, got {url!r}")
        if project is not None and (isinstance(project, bool) or not isinstance(project, (str, int))):
            raise ConfigError(f"label_studio.project must be a project id or name, got {project!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cols(self) -> Columns:
        return Columns(**self.columns)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> WorkspaceConfig:
        if isinstance(data, dict) and "class_names" not in data:
            raise ConfigError(f"{source}: 'class_names' is required (the label of each class index, in order)")
        return dataclass_from_dict(cls, data, source)


def load_config(path: str | os.PathLike) -> WorkspaceConfig:
    """Read a YAML/JSON config with ``yaml.safe_load`` (never executes tags); relative paths stay as written."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such config file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML/JSON ({exc})") from exc
    return WorkspaceConfig.from_dict(data or {}, str(p))


def dump_config(config: WorkspaceConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
