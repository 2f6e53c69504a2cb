"""Generated benchmark data, cached on disk between runs (benchmarks import this as a sibling module)."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(os.environ.get("BROADEN_BENCH_DIR", "/tmp/broaden-bench"))


def cached(folder: Path, spec: dict, write: Callable[[Path], None]) -> Path:
    """``folder`` filled by ``write(folder)`` unless a finished generation with the same ``spec`` is there.

    The marker is written last, so an interrupted generation is redone rather than half-used.
    """
    marker = folder / "_DONE.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.parquet"):
        f.unlink()
    t0 = time.perf_counter()
    write(folder)
    marker.write_text(json.dumps(spec))
    print(f"generated {folder.name} in {time.perf_counter() - t0:.0f} s → {folder}", file=sys.stderr, flush=True)
    return folder
