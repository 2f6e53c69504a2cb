"""Small helpers that keep ``import broaden`` light, every command name unambiguous and old names working.

- :func:`lazy_exports` — a module ``__getattr__`` that imports a re-exported name on first use (PEP 562).
- :func:`command_package` — a package named like its command (``broaden.select``, ``broaden.lsb``,
  ``broaden.simulate``, ``broaden.report``) becomes callable as that command, so ``from broaden import
  select`` is the same object whatever was imported before, and ``select(pool, "entropy", 10)`` runs
  :func:`broaden.select.select` (no function shadows its module, issue 15).
- :func:`renamed` — old keyword names kept one release as deprecated aliases.
"""
from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from collections.abc import Callable, Mapping


def lazy_exports(module: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """``__getattr__`` for ``module``: ``name`` comes from ``exports[name]`` (a module path) when first read."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = importlib.import_module(exports[name])
        value = target if target.__name__ == f"{module}.{name}" else getattr(target, name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__


class CommandPackage(types.ModuleType):
    """A package that is also its command: calling it calls the function of the same name inside it."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def command_package(name: str) -> None:
    """Make the package ``name`` callable as its command (call from the package's ``__init__``)."""
    sys.modules[name].__class__ = CommandPackage


def renamed(**old_to_new: str):
    """Decorator: keyword arguments renamed by the glossary (docs/architecture.md) keep their old name for
    one release, with a DeprecationWarning; giving both names is a TypeError."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got {old}= and {new}=; {old} is the old name of {new}")
                    warnings.warn(f"{fn.__name__}(): {old}= is deprecated, use {new}= (docs/architecture.md, "
                                  "glossary)", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
