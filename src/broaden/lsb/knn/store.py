"""Saved kNN indexes: one folder per (pool, metric, backend), valid only while the pool is unchanged.

Each entry holds ``index.faiss`` (FAISS's own binary format, no pickle), ``ids.arrow`` (the pool's ids in
row order, Arrow IPC) and ``meta.json`` with the pool fingerprint (file names, sizes, mtimes, row counts,
id and embedding columns), the metric, the index parameters, the calibration and a SHA-256 digest of each
data file. An entry whose fingerprint differs from the pool's current one is stale: it is never searched;
it is deleted when found and the index is rebuilt. Entries are written to a temporary folder and renamed
into place.

Content, not size, decides whether a saved file is the one that was written: before an entry is reused
its files are hashed again and compared with the digests recorded at save time, so a same-size edit or a
damaged file is never searched; the entry is deleted and rebuilt (a cache heals itself), and the reason is
reported in ``KNNIndex.info["index_warning"]``. The cost is one sequential read of the entry, streamed in
8 MiB chunks (no extra memory): SHA-256 runs at about 1.3 GB/s per core here, so a 10M-row IVF-SQ8 index
of 384-d embeddings (≈4 GB) takes ≈3 s to verify, small next to rebuilding it; saving pays the same once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import pyarrow as pa

from broaden.io import one_line
from broaden.io.pool import Pool
from broaden.lsb.knn.backends import BACKENDS

VERSION = 2  # 2: meta.json records SHA-256 digests; older entries are rebuilt
FILES = ("index.faiss", "ids.arrow", "meta.json")
CHUNK = 8 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of a file, streamed in ``CHUNK`` bytes through one reused buffer (the index can be GBs)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def default_dir(pool_path: Path) -> Path:
    """``<pool>.lsb-index`` beside the pool file or folder (never inside a pool folder)."""
    p = pool_path.resolve()
    return p.parent / f"{p.name}.lsb-index"


class IndexCache:
    """The saved indexes of one pool under one metric."""

    def __init__(self, root: Path, fingerprint: dict, metric: str):
        self.root, self.fingerprint, self.metric = root, fingerprint, metric
        self.stale_removed: list[str] = []
        self.warnings: list[str] = []  # saved entries found damaged or changed (and removed)

    @classmethod
    def for_pool(cls, source: Pool, metric: str, index_dir=None) -> IndexCache:
        root = Path(index_dir) if index_dir is not None else default_dir(Path(source.data))
        return cls(root, source.fingerprint(), metric)

    def path(self, backend: str) -> Path:
        key = hashlib.sha256(json.dumps([self.fingerprint["pool"], self.fingerprint["embedding_col"],
                                         self.metric], sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{backend}-{self.metric}-{key}"

    def _meta(self, backend: str) -> dict | None:
        try:
            meta = json.loads((self.path(backend) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("version") == VERSION else None

    def _is_valid(self, meta: dict | None, backend: str) -> bool:
        if meta is None or meta.get("fingerprint") != self.fingerprint or meta.get("metric") != self.metric:
            return False
        folder = self.path(backend)
        sizes = meta.get("sizes", {})
        return all((folder / f).is_file() and (folder / f).stat().st_size == sizes.get(f) for f in FILES[:2])

    def valid_backends(self) -> dict[str, dict]:
        """Backends with a saved index of exactly this pool content (metadata only, nothing loaded)."""
        out = {}
        for name in BACKENDS:
            meta = self._meta(name)
            if self._is_valid(meta, name):
                out[name] = meta
        return out

    def load(self, backend: str, params: dict):
        """(faiss index, ids, meta) when a valid entry with these params exists; a stale one is dropped."""
        meta = self._meta(backend)
        if meta is None:
            return None
        if not self._is_valid(meta, backend):
            self._remove(backend)
            return None
        if meta["params"] != params:
            return None
        folder = self.path(backend)
        digests = meta.get("digests") or {}
        changed = [f for f in FILES[:2] if digests.get(f) != file_digest(folder / f)]
        if changed:
            return self._discard(backend, f"{', '.join(changed)} changed since it was saved (checksum mismatch)")
        try:
            # Memory-mapped: loads instantly, pages come from the page cache, and the mapping goes away with
            # the index (a heap copy of a multi-GB index would stay in the allocator after it is dropped).
            index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP)
            with pa.memory_map(str(folder / "ids.arrow")) as src:
                ids = pa.ipc.open_file(src).read_all().column(0).combine_chunks()
        except (RuntimeError, OSError, pa.ArrowException) as exc:  # FAISS reports a bad file as RuntimeError
            return self._discard(backend, f"is unreadable ({one_line(exc)})")
        rows = sum(f[3] for f in self.fingerprint["files"])
        if index.ntotal != rows or len(ids) != rows:  # belt and braces: never search a mismatched index
            return self._discard(backend, f"holds {index.ntotal} rows, the pool {rows}")
        return index, ids, meta

    def _discard(self, backend: str, why: str) -> None:
        """Remove a saved entry that must not be searched, and say why (the caller rebuilds it)."""
        self.warnings.append(f"saved {backend} index {self.path(backend)} {why}; rebuilt it")
        self._remove(backend)
        return None

    def save(self, backend: str, knn) -> Path:
        final = self.path(backend)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            faiss.write_index(knn.index, str(tmp / "index.faiss"))
            with pa.OSFile(str(tmp / "ids.arrow"), "wb") as sink:
                table = pa.table({"id": knn.ids})
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            meta = {
                "version": VERSION, "backend": backend, "metric": self.metric, "params": knn.params,
                "fingerprint": self.fingerprint, "breadth": knn.breadth, "dim": knn.dim,
                "calibration": knn.info.get("calibration"), "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "timings": {k: knn.info.get(k) for k in ("train_s", "add_s", "calibrate_s")},
                "sizes": {f: (tmp / f).stat().st_size for f in FILES[:2]},
                "digests": {f: file_digest(tmp / f) for f in FILES[:2]},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            if final.exists():
                self._remove(backend)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _remove(self, backend: str) -> None:
        folder = self.path(backend)
        if folder.exists():
            trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
            with contextlib.suppress(OSError):
                os.replace(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
                self.stale_removed.append(str(folder))
