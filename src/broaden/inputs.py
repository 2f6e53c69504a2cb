"""Deprecated alias of :mod:`broaden.io.inputs` (moved in 0.2; this module goes in the next release)."""
from __future__ import annotations

import warnings

from broaden.io.inputs import ACCEPTED, as_scored, from_arrays, load_scored, source_name, to_arrow  # noqa: F401

warnings.warn("broaden.inputs moved to broaden.io.inputs; import as_scored/load_scored from broaden or "
              "broaden.io", DeprecationWarning, stacklevel=2)
