"""The Python API of annotation rounds; each function mirrors the ``broaden`` command of the same name.

Every function takes a workspace path (or a :class:`Workspace`, to plug in a custom selector or
classifier) so a team can drive rounds from its own scheduler::

    from broaden.rounds import init, round_start, round_import, round_finish, status
    init("ws", {"class_names": ["ok", "bad"], "strategy": "entropy:0.8,lsb-lt:0.2", "budget": 500})
    round_start("ws", pool="week-12.parquet")       # -> ws/rounds/0001/export/{batch.csv,tasks.json,…}
    round_import("ws", "labels-from-vendor.csv")
    round_push("ws", url="http://localhost:8080")   # or: Label Studio over its API ($LABEL_STUDIO_API_KEY)
    round_pull("ws", url="http://localhost:8080")
    round_finish("ws")
    status("ws")["strategies"]
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from broaden import io
from broaden.errors import BroadenError, ConfigError
from broaden.rounds.annotate import ImportReport
from broaden.rounds.annotate import round_import as _round_import
from broaden.rounds.config import WorkspaceConfig, load_config
from broaden.rounds.finish import RoundFinish
from broaden.rounds.finish import round_finish as _round_finish
from broaden.rounds.start import RoundStart
from broaden.rounds.start import round_start as _round_start
from broaden.rounds.overview import status as _status
from broaden.rounds.workspace import Workspace, refuse_eval_ids, table_keys

PATH_SETTINGS = ("pool", "labeled", "eval", "model")
TABLE_SETTINGS = ("pool", "labeled", "eval")  # may be given in memory (any kind broaden.io.as_scored takes)


def _ws(workspace: str | os.PathLike | Workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def init(workspace: str | os.PathLike, config: str | os.PathLike | dict | WorkspaceConfig | None = None,
         **settings) -> Workspace:
    """``broaden init``: create a workspace from a config file / dict, with ``settings`` overriding it.

    Relative paths (pool, labeled, eval, model) are resolved against the config file's folder (or the
    current folder) and stored absolute, so the workspace works from anywhere.
    """
    base = Path.cwd()
    if isinstance(config, (str, os.PathLike)):
        base = Path(config).resolve().parent
        data = load_config(config).to_dict()
    elif isinstance(config, WorkspaceConfig):
        data = config.to_dict()
    else:
        data = dict(config or {})
    given = {k: v for k, v in settings.items() if v is not None}
    tables = {k: v for k, v in (data | given).items() if k in TABLE_SETTINGS and _in_memory(v)}
    given = {k: v for k, v in given.items() if k not in tables}
    data = {k: v for k, v in data.items() if k not in tables}
    root = Path(workspace)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
        # In-memory tables (DataFrames, Arrow, dicts of arrays) become the workspace's own Parquet files:
        # checked where they are written, then moved in with the config that names them.
        staged = {f"data/{k}.parquet": io.write_table(io.as_scored(v, what=k), Path(tmp) / f"{k}.parquet")
                  for k, v in tables.items()}
        checked = WorkspaceConfig.from_dict(_absolute(data, base) | _absolute(given, Path.cwd())
                                            | {k: str(p) for k, p in zip(tables, staged.values())}, "config")
        check_config(checked)
        cfg = WorkspaceConfig.from_dict(_absolute(data, base) | _absolute(given, Path.cwd())
                                        | {k: str((root / d).resolve()) for k, d in zip(tables, staged)}, "config")
        return Workspace.create(workspace, cfg, staged={d: Path(p) for d, p in staged.items()})


def _in_memory(value) -> bool:
    return value is not None and not isinstance(value, (str, os.PathLike))


def check_config(cfg: WorkspaceConfig) -> None:
    """What ``init`` can check before any round is sent (not at ``finish``, after the labelling work):
    the strategy mix, and that the labelled and evaluation tables are readable, valid for the class names
    and share no id."""
    from broaden.rounds.values import is_auto
    from broaden.select import parse_spec
    from broaden.select.registry import get_strategy

    try:
        for name, _ in ([] if is_auto(cfg.strategy) else parse_spec(cfg.strategy)):
            get_strategy(name)
    except BroadenError as exc:
        raise ConfigError(f"strategy {cfg.strategy!r}: {exc}") from exc
    keys = {}
    for setting in ("labeled", "eval"):
        path = getattr(cfg, setting)
        if path:
            validator = io.Validator(columns=cfg.cols, require=("id", "label", "embedding"),
                                     num_classes=cfg.num_classes)
            try:
                for _ in io.iter_batches(path, validator=validator):
                    pass
            except BroadenError as exc:
                raise ConfigError(f"{setting}: {exc}") from exc
            keys[setting] = table_keys(path, cfg.cols.id, setting)
    refuse_eval_ids(cfg, keys.get("labeled", ()), f"labeled table {cfg.labeled} holds")


def _absolute(settings: dict, base: Path) -> dict:
    return {k: str((base / v).resolve()) if k in PATH_SETTINGS and v else v for k, v in settings.items()}


def round_start(workspace, pool: str | os.PathLike | None = None, *, budget: int | None = None,
                strategy: str | None = None, seed: int | None = None, engine=None) -> RoundStart:
    """``broaden round start``: select and record a batch; writes CSV, JSONL and Label Studio tasks.
    ``pool`` is a path or an in-memory table (DataFrame, Arrow, dict of arrays), written once into the
    workspace as ``pools/<content digest>.parquet`` so the ledger names a file that stays.
    ``engine`` ("local", "ray" or a :class:`broaden.engines.Engine`) runs the selection and LSB's kNN."""
    ws = _ws(workspace)
    if _in_memory(pool):
        pool = _stored_pool(ws, pool)
    return _round_start(ws, pool, budget=budget, strategy=strategy, seed=seed, engine=engine)


def _stored_pool(ws: Workspace, pool) -> Path:
    from broaden.datasets.verify import sha256_file

    tmp = io.write_table(io.as_scored(pool, what="pool"), ws.path / "pools" / ".incoming.parquet")
    dest = ws.path / "pools" / f"{sha256_file(tmp)[:16]}.parquet"
    os.replace(tmp, dest)
    return dest


def round_import(workspace, file: str | os.PathLike, *, strict: bool = False, format: str = "auto",
                 annotator: str | None = None) -> ImportReport:
    """``broaden round import``: add labels from CSV / JSONL / JSON / a Label Studio export."""
    return _round_import(_ws(workspace), file, strict=strict, fmt=format, annotator=annotator)


def round_push(workspace, *, url: str | None = None, project: int | str | None = None, round: int | None = None):
    """``broaden round push`` (and ``round start --to label-studio``): upload an open round's tasks, with the
    model's predictions and broaden's provenance, to a Label Studio project (created if missing). Uploads only
    tasks not in the project yet. The token is read from ``$LABEL_STUDIO_API_KEY``."""
    from broaden.rounds.labelstudio import push_round

    return push_round(_ws(workspace), url=url, project=project, round=round)


def round_pull(workspace, *, url: str | None = None, project: int | str | None = None,
               strict: bool = False) -> ImportReport:
    """``broaden round import --from label-studio``: import a Label Studio project's annotations through its
    API, with the accounting and idempotency of a file import."""
    from broaden.rounds.labelstudio import pull_round

    return pull_round(_ws(workspace), url=url, project=project, strict=strict)


def round_finish(workspace, *, round: int | None = None, allow_pending: bool = False) -> RoundFinish:
    """``broaden round finish``: retrain on all labels, evaluate on the eval set, close the round."""
    return _round_finish(_ws(workspace), round=round, allow_pending=allow_pending)


def status(workspace, *, level: float = 0.9) -> dict:
    """``broaden status``: rounds, counts, metrics and per-strategy bad-case yield (Beta posterior)."""
    return _status(_ws(workspace), level=level)
