"""``simulate()`` and ``demo()``: run the protocol over K repeats, resumably, and write the result folder.

A repeat is done when ``repeats/repeat-NNN.json`` exists with the folder's configuration hash; its
Parquet files are written before it, so an interruption at any point loses at most the repeat in
progress and never leaves a "done" marker without its data.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden._lazy import renamed
from broaden.errors import BroadenError
from broaden.io import write_table, write_text
from broaden.metrics import to_jsonable
from broaden.datasets.verify import sha256_file
from broaden.simulate.data import SimData, load_own_data, load_sim_data, own_data_from_table, own_data_path
from broaden.simulate.groups import build_groups
from broaden.simulate.oracle import check_confusion, load_confusion, noise_confusion
from broaden.simulate.protocol import RepeatRun, SimConfig
from broaden.simulate.scenario import Scenario, class_index, describe, print_clusters, subpopulation
from broaden.simulate.results import FORMAT_VERSION, aggregate, print_tables, write_results

SUBPOP_FILE = "subpop.parquet"
DEMO_DEFAULTS = {"dataset": "clickbait", "max_items": 8000, "initial": 500, "budget": 500, "rounds": 1,
                 "repeats": 1}


class SimulationError(BroadenError):
    """A result folder holding another configuration, or settings the data cannot support."""


def config_hash(config: dict) -> str:
    """Digest of everything that changes results; ``repeats`` is left out so a run can be extended."""
    payload = {k: v for k, v in config.items() if k not in ("repeats", "config_hash")}
    return hashlib.sha256(json.dumps(to_jsonable(payload), sort_keys=True).encode()).hexdigest()[:16]


def _data_digest(data: SimData) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(data.ids).astype(str).astype("U").tobytes())
    h.update(data.labels.tobytes())
    h.update(data.is_test.tobytes())
    # In-memory data has no file digest: the features themselves say whether a resumed run is the same.
    h.update(np.ascontiguousarray(data.features).tobytes())
    return h.hexdigest()[:16]


def _ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def _subpop_mask(data: SimData, spec: str, out: Path) -> np.ndarray:
    """S as a row mask: read back from a resumed run's id list, else computed from ``spec`` (DESIGN §3a:
    k-means ids shuffle between processes, so a run never recomputes the S it started with)."""
    saved = out / SUBPOP_FILE
    try:
        old = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    if saved.is_file() and (old.get("scenario") or {}).get("subpop") == spec \
            and old.get("data_digest") == _data_digest(data):
        from broaden.io import read_table

        wanted = {str(i) for i in read_table(saved).column("id").to_pylist()}
        return np.asarray([str(i) in wanted for i in data.ids], dtype=bool)
    return subpopulation(data, spec)


def _confusion(label_noise: float, confusion, num_classes: int) -> np.ndarray | None:
    if confusion is not None and label_noise:
        raise SimulationError("give either label_noise or confusion, not both")
    if confusion is not None:
        if isinstance(confusion, (str, os.PathLike)):
            return load_confusion(confusion, num_classes)
        return check_confusion(np.asarray(confusion, dtype=np.float64), num_classes)
    return noise_confusion(label_noise, num_classes) if label_noise else None


def _repeat_paths(out: Path, repeat: int) -> tuple[Path, Path]:
    return out / "repeats" / f"repeat-{repeat:03d}.json", out / "repeats" / f"repeat-{repeat:03d}"


def _load_done(path: Path, digest: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged record is redone, never trusted
    return record if record.get("config_hash") == digest else None


def _check_folder(out: Path, config: dict) -> None:
    """Refuse to mix configurations in one folder that already holds finished repeats."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if old.get("config_hash") != config["config_hash"] and any((out / "repeats").glob("repeat-*.json")):
        changed = sorted(k for k in set(old) | set(config)
                         if k not in ("repeats", "config_hash") and old.get(k) != config.get(k))
        raise SimulationError(
            f"{out}: holds results of a different configuration (changed: {', '.join(changed) or 'data'}); "
            "use a new --out folder (only --repeats may change when resuming)"
        )


@renamed(seeds="max_seeds", progress="show_progress")
def simulate(
    dataset: str | os.PathLike | SimData,
    *,
    out: str | os.PathLike,
    budget: int = 1000,
    initial: int = 1000,
    lsb_share: float = 0.2,
    rounds: int = 1,
    repeats: int = 3,
    seed: int = 0,
    label_noise: float = 0.0,
    confusion=None,
    max_seeds: int | None = 1000,
    seed_threshold: float = 0.5,
    k: int = 10,
    lookalike_threshold: float = 0.5,
    latent: str = "tuned",
    denoise: bool = False,
    variants: str | list[str] | None = None,
    groups: list[str] | None = None,
    pool_size: int | None = None,
    max_items: int | None = None,
    data_options: dict | None = None,
    class_groups: list[list[int | str]] | None = None,
    encoder: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    classifier: dict | None = None,
    index: str = "flat",
    scenario: str = "iid",
    subpop: str | None = None,
    relabel_to: str | int | None = None,
    recent: int = 0,
    recent_subpop: int = 0,
    lsb_fill: bool = False,
    validation: int = 500,
    annotators: int = 1,
    auto_floor: float | None = None,
    print_results: bool = True,
    show_progress: bool = True,
) -> dict:
    """Run the paper's Tables 1–2 protocol (§4.1.2) with an oracle; returns the results.json content.

    ``dataset`` is a registered name (features from the cached frozen encoder), a CSV / JSONL / Parquet
    file (:func:`load_own_data` with ``data_options``; ``class_groups`` then merges classes), the same data
    in memory (a pandas / polars DataFrame, Arrow table, Hugging Face dataset or dict of arrays, through
    :func:`broaden.io.inputs.as_scored` and the same ``data_options``) or a ready :class:`SimData`. Finished repeats in ``out`` are reused (see module docstring). ``scenario``,
    ``subpop``, ``relabel_to``, ``recent`` and ``recent_subpop`` set where broadening can pay off
    (:mod:`broaden.simulate.scenario`); ``lsb_fill`` widens k until every LSB share is filled. The ``Auto``
    group measures strategy values on ``validation`` labelled pool items that no group selects.
    ``annotators`` > 1 simulates that many independent noisy annotators (:mod:`broaden.simulate.annotators`):
    every group receives one vote per item, the ``ActiveLab`` group may ask for more (relabel or label new).
    ``auto_floor`` sets the ``Auto`` group's least share per arm (None: the allocation's default, docs/auto.md).
    """
    from rich.console import Console

    log = Console(stderr=True, quiet=not show_progress)
    if not 0 <= lsb_share <= 1:
        raise SimulationError(f"lsb_share must be within 0 … 1, got {lsb_share}")
    for name, value in (("budget", budget), ("initial", initial), ("rounds", rounds), ("repeats", repeats),
                        ("annotators", annotators)):
        if value < 1:
            raise SimulationError(f"{name} must be >= 1, got {value}")
    if auto_floor is not None and not 0 <= auto_floor <= 1:
        raise SimulationError(f"auto_floor must be within 0 … 1 (a share of the budget per arm), got {auto_floor}")
    if pool_size is not None and pool_size < budget * rounds:
        # Checked here, not by the first selection that runs dry: that would come after the folder is
        # written and, with several rounds, after whole rounds of work.
        raise SimulationError(f"pool_size={pool_size} cannot supply {rounds} round(s) of budget {budget}; "
                              f"use at least {budget * rounds}")
    in_memory = not isinstance(dataset, (str, os.PathLike, SimData))
    data_file = None if isinstance(dataset, SimData) or in_memory else own_data_path(dataset)
    if data_options and data_file is None and not in_memory:
        raise SimulationError("data options (id_col, label_col, text, ...) apply only to a data file (data=PATH) "
                              "or an in-memory table")
    if isinstance(dataset, SimData):
        data = dataset
    elif in_memory:  # a DataFrame, Arrow table, HF dataset or dict of arrays: the same path as a file
        from broaden.io.inputs import as_scored

        data = own_data_from_table(as_scored(dataset, what="data"), encoder=encoder, cache_dir=cache_dir,
                                   max_items=max_items, show_progress=show_progress,
                                   **(data_options or {}))
    elif data_file is not None:
        data = load_own_data(data_file, encoder=encoder, cache_dir=cache_dir, max_items=max_items,
                             show_progress=show_progress, **(data_options or {}))
    else:
        data = load_sim_data(dataset, data_dir=data_dir, encoder=encoder, cache_dir=cache_dir, max_items=max_items,
                             show_progress=show_progress)
    data = data.regroup(class_groups) if class_groups else data
    # Only set keys enter the config, so folders of runs without them keep their configuration hash.
    data_source = {**({"data_file": str(data_file), "data_sha256": sha256_file(data_file),
                       "data_options": dict(data_options or {})} if data_file is not None else {}),
                   **({"class_groups": [list(g) for g in class_groups]} if class_groups else {})}
    out = Path(out)
    if subpop and subpop.startswith("kmeans:") and subpop.count(":") == 2:
        print_clusters(data, subpop, console=log if show_progress else None)
        raise SimulationError(f"subpop={subpop!r} lists the clusters; choose one as {subpop}:CLUSTER")
    target = None if relabel_to is None else class_index(data, str(relabel_to))
    sc = Scenario(scenario, subpop, target, recent, recent_subpop)
    mask = _subpop_mask(data, subpop, out) if subpop else None
    if mask is not None:
        log.print(describe(data, subpop, mask))
    matrix = _confusion(label_noise, confusion, data.num_classes)
    group_specs = build_groups(latent=latent, denoise=denoise, variants=variants,
                               dataset_discrepancy=data.discrepancy, num_classes=data.num_classes, include=groups)
    cfg = SimConfig(budget=budget, initial=initial, lsb_share=lsb_share, rounds=rounds, repeats=repeats, seed=seed,
                    label_noise=label_noise, confusion=None if matrix is None or label_noise else matrix.tolist(),
                    seeds=max_seeds, seed_threshold=seed_threshold, k=k, lookalike_threshold=lookalike_threshold,
                    index=index, pool_size=pool_size, classifier=dict(classifier or {}), lsb_fill=lsb_fill,
                    validation=validation, annotators=annotators, auto_floor=auto_floor)
    config = {
        "format_version": FORMAT_VERSION, "dataset": data.name, "num_classes": data.num_classes,
        "class_names": list(data.class_names), "task": data.task, "discrepancy": data.discrepancy,
        **cfg.to_dict(),
        "latent": latent, "denoise": denoise,
        "groups": [g.name for g in group_specs], "group_specs": {g.name: vars(g) for g in group_specs},
        "features": data.feature_info, "max_items": max_items, "n_items": int(len(data.ids)),
        "n_train": int((~data.is_test).sum()), "n_test": int(data.is_test.sum()), "data_digest": _data_digest(data),
        **data_source,
        "scenario": sc.to_dict(),
    }
    if mask is not None:
        config.update(subpop_size=int(mask.sum()), subpop_test=int((mask & data.is_test).sum()),
                      subpop_digest=_ids_digest(data.ids[mask]))
    config["config_hash"] = digest = config_hash(config)
    _check_folder(out, config)
    write_text(json.dumps(to_jsonable(config), indent=1), out / "config.json")
    if mask is not None:
        write_table(pa.table({"id": pa.array(data.ids[mask].tolist())}), out / SUBPOP_FILE)

    records = []
    for r in range(repeats):
        record_path, frame_dir = _repeat_paths(out, r)
        done = _load_done(record_path, digest)
        if done is not None:
            log.print(f"repeat {r + 1}/{repeats}: already done, skipped")
            records.append(done)
            continue
        log.print(f"repeat {r + 1}/{repeats}: {len(group_specs)} groups × {rounds} round(s) …")
        record, frames = RepeatRun(data, cfg, group_specs, r, matrix, sc, mask).run()
        for name, parts in frames.items():
            parts = [p for p in parts if p.num_rows]
            if parts:
                write_table(pa.concat_tables(parts, promote_options="permissive"), frame_dir / f"{name}.parquet")
        record = {"format_version": FORMAT_VERSION, "config_hash": digest, **record}
        write_text(json.dumps(to_jsonable(record), indent=1), record_path)
        log.print(f"repeat {r + 1}/{repeats}: done in {record['seconds']:.0f} s")
        records.append(record)
    results = aggregate(to_jsonable(config), records, [g.name for g in group_specs], out)
    write_results(out, results)
    if print_results:
        print_tables(results)
    return results


@renamed(progress="show_progress")
def demo(out: str | os.PathLike = "demo-output", *, data_dir=None, cache_dir=None, show_progress: bool = True,
         report: bool = True, **overrides) -> dict:
    """One short simulation on the clickbait headlines: a stratified subsample, one round, one repeat.

    Prints both tables and where the full results (and the HTML report, when available) are.
    """
    from rich.console import Console

    settings = {**DEMO_DEFAULTS, **overrides}
    dataset = settings.pop("dataset")
    results = simulate(dataset, out=out, data_dir=data_dir, cache_dir=cache_dir, show_progress=show_progress,
                       **settings)
    console = Console()
    console.print(f"Full results: {Path(out).resolve()} (results.json, table1.csv, table2.csv; "
                  "format in docs/results-format.md)")
    if report:
        html = _write_report(Path(out))
        console.print(f"Report: {html}" if html else "Report: `broaden report` is not available in this install")
    return results


def _write_report(out: Path) -> Path | None:
    try:
        from broaden.report import report as make_report
    except ImportError:
        return None
    html = out / "report.html"
    make_report(out, out=html)
    return html
