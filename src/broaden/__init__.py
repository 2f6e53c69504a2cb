"""broaden: choose what to annotate next and train the classifier that benefits from it.

The public API mirrors the CLI: every ``broaden <command>`` has a Python function of the same name.
"""
from __future__ import annotations

__version__ = "0.1.0"
