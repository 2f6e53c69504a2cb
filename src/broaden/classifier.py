"""Deprecated alias of :mod:`broaden.models.classifier` (moved in 0.2; this module goes in the next release)."""
from __future__ import annotations

import warnings

from broaden.models.classifier import *  # noqa: F401,F403
from broaden.models.classifier import __all__  # noqa: F401  (the same names)

warnings.warn("broaden.classifier moved to broaden.models.classifier; import it from there",
              DeprecationWarning, stacklevel=2)
