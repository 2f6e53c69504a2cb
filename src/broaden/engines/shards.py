"""How a pool is split for distributed work: units (what one reader opens) grouped into shards.

A unit is a top-level entry of the pool folder — a Parquet file, or a sub-folder of Parquet files — or
a slice of an in-memory table. Units keep the pool's row order (file-name order, the order
:func:`broaden.io.parquet_files` reads), so each unit knows the global position of its first row and a
shard's results translate back to the positions the local engine would report. A shard is a run of
consecutive units holding about ``shard_rows`` rows; a unit is never split, so the finest split is one
unit per shard (docs/scaling.md: lay a large pool out as many files or sub-folders).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from broaden.io import Pool, count_rows, parquet_files, source_name

if TYPE_CHECKING:
    from broaden._typing import PoolLike

TABLE_SLICE_ROWS = 262_144


@dataclass(frozen=True)
class Unit:
    """One readable piece of the pool: a path (file or folder) or an in-memory table, and where it starts."""

    data: Path | pa.Table
    offset: int
    rows: int

    @property
    def name(self) -> str:
        return source_name(self.data, "pool table")


@dataclass(frozen=True)
class Shard:
    units: tuple[Unit, ...]

    @property
    def rows(self) -> int:
        return sum(u.rows for u in self.units)

    @property
    def offset(self) -> int:
        return self.units[0].offset


def pool_units(pool: PoolLike | Pool) -> list[Unit]:
    """The pool's units in row order, with their first global row position (row counts from footers)."""
    pool = Pool.of(pool)  # a path stays a path; anything in memory is one Arrow table (broaden.io)
    if pool.is_table:
        table = pool.data
        return [Unit(table.slice(s, TABLE_SLICE_ROWS), s, min(TABLE_SLICE_ROWS, table.num_rows - s))
                for s in range(0, table.num_rows, TABLE_SLICE_ROWS)] or [Unit(table, 0, 0)]
    root = pool.data
    files = parquet_files(root)
    if not root.is_dir():
        return [Unit(root, 0, count_rows(root))]
    groups: dict[Path, int] = {}
    for f in files:  # files of one top-level entry are contiguous in parquet_files' order
        top = root / f.relative_to(root).parts[0]
        groups[top] = groups.get(top, 0) + count_rows(f)
    units, offset = [], 0
    for path, rows in groups.items():
        units.append(Unit(path, offset, rows))
        offset += rows
    return units


def plan_shards(units: list[Unit], *, shards: int | None = None, shard_rows: int | None = None) -> list[Shard]:
    """Consecutive units grouped into about ``shards`` shards (or shards of about ``shard_rows`` rows)."""
    total = sum(u.rows for u in units)
    if shard_rows is None:
        shard_rows = -(-total // max(1, shards or 1)) if total else 1
    out: list[list[Unit]] = [[]]
    have = 0
    for u in units:
        if out[-1] and have + u.rows > shard_rows and have >= shard_rows / 2:
            out.append([])
            have = 0
        out[-1].append(u)
        have += u.rows
    return [Shard(tuple(s)) for s in out if s]
