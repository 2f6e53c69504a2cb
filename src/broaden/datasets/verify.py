"""SHA-256 verification of dataset files against the published digests, with a persistent cache.

Hashing FSDD's 3,000 WAVs on every load would dominate small jobs, so each computed digest is remembered
in ``<cache>/checksums.json`` keyed by (resolved path, size, mtime_ns); a file that changes in size or
modification time is hashed again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from broaden.datasets.locate import cache_dir, describe_origin, resolve_data_dir
from broaden.datasets.registry import DatasetInfo, FileSpec, get_info
from broaden.errors import DatasetError
from broaden.io import write_text
from broaden.progress import track

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """Digests of files already hashed, valid while a file keeps its size and mtime."""

    def __init__(self, path: Path | None = None):
        self.path = path if path is not None else cache_dir() / "checksums.json"
        self._entries: dict[str, list] = {}
        self._dirty = False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._entries = loaded

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        entry = self._entries.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return entry[2]
        digest = sha256_file(path)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        # A read-only or absent home must not break loading: the cache only saves time.
        if self._dirty:
            with contextlib.suppress(OSError):
                write_text(json.dumps(self._entries, sort_keys=True), self.path)
            self._dirty = False


@dataclass(frozen=True)
class DatasetStatus:
    """What ``broaden datasets list`` reports for one dataset."""

    info: DatasetInfo
    folder: Path
    files_expected: int
    files_present: int
    verified: bool
    problem: str | None = None

    @property
    def present(self) -> bool:
        return self.files_present > 0


def dataset_folder(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    return resolve_data_dir(data_dir) / get_info(name).name


def read_manifest(path: Path) -> list[FileSpec]:
    """Parse a ``sha256sum`` listing (``<hex>  <relative path>`` per line)."""
    specs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        rel = rel.lstrip("*")
        if not sep or len(digest) != 64 or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DatasetError(f"{path} line {lineno}: expected '<sha256>  <relative path>', got {line!r}")
        specs.append(FileSpec(rel, digest.lower()))
    return specs


def listed_files(info: DatasetInfo, folder: Path) -> list[FileSpec]:
    """The dataset's files, the manifest's entries included, without checking anything."""
    if info.manifest is None:
        return list(info.files)
    return list(info.files) + read_manifest(folder / info.manifest.path)


def _check_file(folder: Path, spec: FileSpec, info: DatasetInfo, cache: DigestCache) -> None:
    path = folder / spec.path
    if not path.is_file():
        raise DatasetError(f"dataset {info.name!r}: file {path} is missing")
    if spec.size is not None and path.stat().st_size != spec.size:
        raise DatasetError(
            f"dataset {info.name!r}: file {path} has {path.stat().st_size} bytes, expected {spec.size} "
            f"(published with its SHA-256 in the dataset README); the file is truncated or replaced"
        )
    actual = cache.digest(path)
    if actual != spec.sha256:
        raise DatasetError(
            f"dataset {info.name!r}: file {path} has SHA-256 {actual}, expected {spec.sha256}; "
            f"the file is corrupt or not the published version"
        )


def verify_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, cache: DigestCache | None = None
) -> list[FileSpec]:
    """Check every file of ``name`` against its published SHA-256; return the verified file list.

    Raises :class:`DatasetError` naming the first missing or mismatching file.
    """
    info = get_info(name)
    folder = resolve_data_dir(data_dir) / info.name
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {info.name!r} not found: {folder} does not exist (data directory: "
            f"{describe_origin(data_dir)})" + (f"; `broaden datasets fetch {info.name}` can download it"
                                               if info.fetchable else "")
        )
    cache = cache or DigestCache()
    try:
        if info.manifest is not None:
            _check_file(folder, info.manifest, info, cache)  # vouches for the digests it lists
        specs = listed_files(info, folder)
        for spec in progress(specs, f"verifying {info.name}"):
            _check_file(folder, spec, info, cache)
    finally:
        cache.save()
    return specs


def dataset_status(name: str, data_dir: str | os.PathLike | None = None,
                   *, cache: DigestCache | None = None) -> DatasetStatus:
    """Presence and verification state of one dataset (reports problems instead of raising them)."""
    info = get_info(name)
    folder = resolve_data_dir(data_dir) / info.name
    listed = list(info.files)
    if info.manifest is not None:
        listed.append(info.manifest)
        with contextlib.suppress(DatasetError, OSError, UnicodeDecodeError):
            listed += read_manifest(folder / info.manifest.path)
    present = sum((folder / spec.path).is_file() for spec in listed)
    if not present:
        return DatasetStatus(info, folder, len(listed), 0, False, "not present")
    try:
        verify_dataset(name, data_dir, cache=cache)
    except DatasetError as exc:
        return DatasetStatus(info, folder, len(listed), present, False, str(exc))
    return DatasetStatus(info, folder, len(listed), present, True)


def progress(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate with a progress bar on stderr when it is a terminal and the work is long (≥ 100 items)."""
    if total is None:
        items = list(items)
        total = len(items)
    with track(description, total, total >= 100, transient=True) as advance:
        for item in items:
            yield item
            advance()
