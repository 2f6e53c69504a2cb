"""A tiny safe-templating helper: every string is HTML-escaped unless it is already :class:`Markup`.

Report content comes from result files (item texts, class and group names), so nothing data-derived may
reach the page unescaped. Elements are built with :func:`h`; only our own code creates ``Markup``.
"""
from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterable

_ATTR_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_:.-]*$")
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "source", "col"})
# The only URL forms a report emits: inline media, in-page anchors and relative media paths.
_SAFE_DATA_URI = re.compile(r"^data:(image/png|audio/wav|audio/x-wav);base64,[A-Za-z0-9+/=]*$")


class Markup(str):
    """A string that is already safe HTML (produced by this module or by our renderers)."""

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, escape(other)))


def escape(value: object) -> Markup:
    """HTML-escape anything that is not already :class:`Markup` (quotes included, for attributes)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(escape(sep).join(escape(p) for p in parts))


def h(tag: str, *children: object, **attrs: object) -> Markup:
    """``<tag attrs>children</tag>`` with escaped text and attribute values.

    Attribute names come from our code (``class_`` → ``class``, ``data_x`` → ``data-x``); event-handler
    attributes are refused because the page's script attaches its listeners itself. ``None``/``False``
    values drop the attribute, ``True`` writes it bare. ``href``/``src`` must pass :func:`safe_url`.
    """
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")
        if not _ATTR_NAME.match(name) or name.lower().startswith("on"):
            raise ValueError(f"refusing attribute name {name!r}")
        if value is True:
            parts.append(name)
            continue
        if name in ("href", "src"):
            value = safe_url(str(value))
        parts.append(f'{name}="{escape(value)}"')
    open_tag = "<" + " ".join(parts) + ">"
    if tag in _VOID:
        return Markup(open_tag)
    return Markup(open_tag + "".join(escape(c) for c in children if c is not None) + f"</{tag}>")


def safe_url(url: str) -> str:
    """Allow in-page anchors, base64 PNG/WAV data URIs and relative paths; anything else is refused.

    Relative paths are percent-encoded and prefixed with ``./`` so a file name such as ``javascript:x``
    can never be read as a URL scheme.
    """
    if url.startswith("#") and _ATTR_NAME.match(url[1:] or "x"):
        return url
    if url.startswith("data:"):
        if _SAFE_DATA_URI.match(url):
            return url
        raise ValueError("refusing a data: URI that is not base64 PNG or WAV")
    return relative_url(url)


def relative_url(path: str) -> str:
    if path.startswith("./") or path.startswith("../"):
        return urllib.parse.quote(path, safe="/.")
    if "//" in path or path.startswith("/"):
        raise ValueError(f"refusing a non-relative URL {path!r}")
    return "./" + urllib.parse.quote(path, safe="/.")
