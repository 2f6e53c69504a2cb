"""``broaden datasets fetch``: download a dataset from its pinned public address, checksum first.

Files are downloaded into a staging folder beside the dataset folder and checked against the published
SHA-256 (for FSDD: SHA256SUMS is rebuilt from the downloaded recordings and its digest compared with the
published one) before anything is moved into place. Existing files that differ are never overwritten.
Never called by the test suite against the network.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broaden.datasets.locate import resolve_data_dir
from broaden.datasets.registry import DatasetInfo, FileSpec, get_info
from broaden.datasets.verify import DigestCache, progress, sha256_file, verify_dataset
from broaden.errors import DatasetError

TIMEOUT_S = 60
WORKERS = 8


def _urlopen(url: str):
    # Module-level so tests can serve files locally instead of touching the network.
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 (https addresses from the registry)


def _download(spec: FileSpec, staging: Path) -> Path:
    dest = staging / spec.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _urlopen(spec.url) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except OSError as exc:
        raise DatasetError(f"download of {spec.url} failed: {exc}") from exc
    if spec.sha256:
        actual = sha256_file(dest)
        if actual != spec.sha256:
            raise DatasetError(f"{spec.url}: downloaded file has SHA-256 {actual}, expected {spec.sha256}")
    return dest


def _remote_files(info: DatasetInfo) -> list[FileSpec]:
    remote = list(info.files)
    # Manifest entries have no digest of their own here: the rebuilt manifest vouches for all of them.
    remote += [FileSpec(p, "", None, info.manifest_url.format(path=p)) for p in info.manifest_entries]
    return remote


def _write_manifest(info: DatasetInfo, staging: Path) -> None:
    lines = "".join(f"{sha256_file(staging / p)}  {p}\n" for p in info.manifest_entries)
    digest = hashlib.sha256(lines.encode()).hexdigest()
    if digest != info.manifest.sha256:
        raise DatasetError(
            f"dataset {info.name!r}: the downloaded files do not match the published "
            f"{info.manifest.path} (its SHA-256 would be {digest}, expected {info.manifest.sha256})"
        )
    (staging / info.manifest.path).write_text(lines, encoding="utf-8")


def fetch_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Download ``name`` into the data directory (``data_dir``, else BROADEN_DATA_DIR, else the cache).

    Returns the dataset folder. A dataset that already verifies is left as it is.
    """
    info = get_info(name)
    if not info.fetchable:
        raise DatasetError(f"dataset {info.name!r} has no public download address; place its files manually")
    folder = resolve_data_dir(data_dir) / info.name
    with contextlib.suppress(DatasetError):
        verify_dataset(info.name, data_dir)
        return folder
    remote = _remote_files(info)
    names = [s.path for s in remote] + ([info.manifest.path] if info.manifest else [])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{info.name}.", suffix=".partial", dir=folder.parent))
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            for _ in progress(pool.map(lambda s: _download(s, staging), remote),
                              f"fetching {info.name}", total=len(remote)):
                pass
        if info.manifest is not None:
            _write_manifest(info, staging)
        _move_into_place(staging, folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    verify_dataset(info.name, data_dir, cache=DigestCache())
    return folder


def _move_into_place(staging: Path, folder: Path, names: list[str]) -> None:
    # Check every conflict before moving anything, so a refusal leaves the folder as it was.
    for rel in names:
        dest = folder / rel
        if dest.exists() and sha256_file(dest) != sha256_file(staging / rel):
            raise DatasetError(f"{dest} exists and differs from the published file; move it away and fetch again")
    for rel in names:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, dest)
