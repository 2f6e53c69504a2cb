"""Explorer rows from result-table rows: text fields, media and probabilities under one column convention.

Media columns the explorer understands, for a seed or neighbour column prefix ``P`` (``seed_``,
``neighbor_``, or empty for a plain item table) — see docs/report.md:

- ``P image``: pixels (a flat square grey image, or with ``P image_shape``) or encoded image bytes;
- ``P image_path``: an image file;
- ``P audio`` with ``P sample_rate`` (or ``sample_rate``): samples;
- ``P audio_path``: a WAV file (embedded when small, else linked relative to the report).

Relative paths are resolved against the result folder. A medium that cannot be read is left out of the
row (the report is still written) and counted in the explorer's note.
"""
from __future__ import annotations

import io as _io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broaden.report import media


@dataclass
class MediaContext:
    base_dir: Path
    report_dir: Path
    failures: list[str] = field(default_factory=list)

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def note(self) -> str:
        if not self.failures:
            return ""
        return f"{len(self.failures)} media item(s) could not be read and are not shown (first: {self.failures[0]})."


def image_of(row: Mapping, prefix: str, ctx: MediaContext) -> str | None:
    try:
        if row.get(f"{prefix}image") is not None:
            value = row[f"{prefix}image"]
            if isinstance(value, (bytes, bytearray)):
                return media.png_data_uri(_io.BytesIO(value))
            return media.png_data_uri(value, row.get(f"{prefix}image_shape"))
        if row.get(f"{prefix}image_path"):
            return media.png_data_uri(ctx.path(row[f"{prefix}image_path"]))
    except (OSError, ValueError) as exc:
        ctx.failures.append(f"{prefix}image of {row.get(f'{prefix}id', '?')}: {exc}")
    return None


def audio_of(row: Mapping, prefix: str, ctx: MediaContext) -> str | None:
    try:
        if row.get(f"{prefix}audio") is not None:
            rate = row.get(f"{prefix}sample_rate") or row.get("sample_rate")
            return media.audio_src(row[f"{prefix}audio"], sample_rate=rate)
        if row.get(f"{prefix}audio_path"):
            return media.audio_src(ctx.path(row[f"{prefix}audio_path"]), report_dir=ctx.report_dir)
    except (OSError, ValueError) as exc:
        ctx.failures.append(f"{prefix}audio of {row.get(f'{prefix}id', '?')}: {exc}")
    return None


def text_fields(row: Mapping, names: dict[str, str]) -> dict[str, str]:
    """``{shown name: text}`` for the given ``{column: shown name}`` that hold a value."""
    return {shown: str(row[col]) for col, shown in names.items() if row.get(col) not in (None, "")}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".wave")


def file_media(name: str, value: str, ctx: MediaContext) -> tuple[str, str] | None:
    """A media column's value as ("image" | "audio", src) when it names a readable local file, else None
    (URLs and files that are not here are shown as text instead)."""
    if not value or "://" in value:
        return None
    path = ctx.path(value)
    suffix, low = path.suffix.lower(), name.lower()
    kind = "audio" if suffix in AUDIO_SUFFIXES or "audio" in low else "image" if suffix in IMAGE_SUFFIXES else None
    if kind is None or not path.is_file():
        return None
    try:
        if kind == "image":
            return kind, media.png_data_uri(path)
        return kind, media.audio_src(path, report_dir=ctx.report_dir)
    except (OSError, ValueError) as exc:
        ctx.failures.append(f"{name} {value}: {exc}")
        return None
