"""Strategy registry: name → function ``fn(pool, n, ctx) -> (ids, scores[, details])``, ranked best-first.

A strategy returns up to ``n`` eligible ids (never one in ``ctx.exclude``) with their scores, best
first, and optionally ``details``: a pa.Table with one row per returned id holding provenance columns
that ``select`` copies into its output (LSB reports the seed, rank, similarity and lookalike score). Built-in strategies register on import of :mod:`broaden.select.strategies`; LSB strategies
(``lsb``, ``lsb-lt``) live in ``broaden.lsb.strategy`` and are imported the first time a name is not
found, so selection never imports LSB at module load (no import cycle). A name may also stand for a
whole mix resolved from the run's data (``auto``, :mod:`broaden.auto.strategy`): :func:`register_mix`. A
*wrapper* turns any strategy into another, named ``wrapper(inner)`` (``diverse(entropy)``,
:mod:`broaden.select.diversity`): :func:`register_wrapper`.
"""
from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from broaden.engines import get_engine
from broaden.errors import SelectionError
from broaden.io.ids import IdSet
from broaden.io.table import BATCH_SIZE, DEFAULT_COLUMNS, Columns

StrategyFn = Callable[["str | os.PathLike | pa.Table", int, "SelectContext"], tuple[np.ndarray, np.ndarray]]
# Modules that register strategies on import; tried in order when a name is unknown.
PLUGIN_MODULES = ("broaden.select.strategies", "broaden.select.hw", "broaden.select.activelab", "broaden.lsb.strategy",
                  "broaden.auto.strategy", "broaden.select.diversity")
#: ``resolve(labeled, options, *, columns, seed) -> (mix spec, report)`` for a name that stands for a mix.
MixResolver = Callable[..., tuple[Any, Any]]


@dataclass
class SelectContext:
    """What a strategy needs besides the pool and the count: column names, ids to skip, the seed,
    the labelled table (path/table/None) and strategy options (e.g. ``committee_cols``)."""

    columns: Columns = DEFAULT_COLUMNS
    exclude: IdSet = field(default_factory=IdSet)
    seed: int = 0
    labeled: str | os.PathLike | pa.Table | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = BATCH_SIZE
    engine: Any = None  # a broaden.engines.Engine; None = this process
    #: What each strategy chose to report about its run, by strategy name (LSB: its LSBResult).
    reports: dict[str, Any] = field(default_factory=dict)

    @property
    def runner(self):
        """The engine that scans the pool (the local engine unless one was given)."""
        return get_engine(self.engine)

    def __post_init__(self):
        if not isinstance(self.exclude, IdSet):
            self.exclude = IdSet(self.exclude if self.exclude is not None else ())


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: StrategyFn
    needs_labeled: bool = False
    #: The option names the strategy reads (None: undeclared, then no option is checked).
    options: tuple[str, ...] | None = None
    #: May pick the pool rows named in the ``annotations`` option again (relabel), though they are labelled.
    relabels: bool = False


_REGISTRY: dict[str, Strategy] = {}
_MIXES: dict[str, MixResolver] = {}
_MIX_OPTIONS: dict[str, tuple[str, ...]] = {}
#: name → (``wrap(inner Strategy) -> StrategyFn``, the option names the wrapper reads)
_WRAPPERS: dict[str, tuple[Callable[[Strategy], StrategyFn], tuple[str, ...]]] = {}
_WRAPPED = re.compile(r"([\w-]+)\((.+)\)")
#: Options every strategy may be given.
COMMON_OPTIONS = ("show_progress",)


def register_strategy(name: str, fn: StrategyFn, needs_labeled: bool = False,
                      options: tuple[str, ...] | None = None, relabels: bool = False) -> StrategyFn:
    """Make ``fn`` available as ``--strategy name`` (re-registering a name replaces it); ``options`` are the
    option names it reads from ``ctx.options`` (checked by :func:`check_options`); ``relabels``: it may pick
    the items named in the ``annotations`` option again (:mod:`broaden.select.activelab`)."""
    _REGISTRY[name] = Strategy(name, fn, needs_labeled, None if options is None else tuple(options), relabels)
    return fn


def option_number(option: str, value, kind: type = float):
    """``value`` of strategy option ``option`` as ``kind`` (int or float; text is parsed, an int must be whole),
    or an error naming the option and the value."""
    text = value.strip() if isinstance(value, str) else value
    try:
        number = kind(text)
        whole = kind is not int or isinstance(text, str) or number == float(text)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        what = "an integer" if kind is int else "a number"
        raise SelectionError(f"option {option}: {text!r} is not {what}") from None
    return number


def check_options(options: dict) -> None:
    """Strategy options are typed: a name no registered strategy or mix reads (a typo such as
    ``easy_shares``) is an error naming it and the accepted ones, never silently ignored."""
    if not options:
        return
    _load_plugins()
    if any(s.options is None for s in _REGISTRY.values()):
        return  # a plugin that does not declare its options may read any
    accepted = {*COMMON_OPTIONS, *(o for s in _REGISTRY.values() for o in s.options),
                *(o for opts in _MIX_OPTIONS.values() for o in opts),
                *(o for _, opts in _WRAPPERS.values() for o in opts)}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SelectionError(f"unknown strategy option(s) {', '.join(map(repr, unknown))}; accepted: "
                             f"{', '.join(sorted(accepted))}")


def register_mix(name: str, resolve: MixResolver, options: tuple[str, ...] = ()) -> MixResolver:
    """Make ``--strategy name`` stand for the mix ``resolve`` returns for the run's labelled set and options
    (``options``: the names it reads); its report is kept under ``name`` in ``select(..., return_details=True)``."""
    _MIXES[name] = resolve
    _MIX_OPTIONS[name] = tuple(options)
    return resolve


def register_wrapper(name: str, wrap: Callable[[Strategy], StrategyFn], options: tuple[str, ...] = ()) -> None:
    """Make ``--strategy 'name(inner)'`` run ``wrap(get_strategy(inner))`` for any registered ``inner``;
    the wrapped strategy reads ``options`` besides the inner one's and needs the labelled set when it does."""
    _WRAPPERS[name] = (wrap, tuple(options))


def _wrapped(name: str) -> Strategy | None:
    """The strategy ``wrapper(inner)`` stands for, or None when ``name`` is not of that form."""
    m = _WRAPPED.fullmatch(name.strip())
    if m is None or m.group(1) not in _WRAPPERS:
        return None
    wrap, options = _WRAPPERS[m.group(1)]
    inner = get_strategy(m.group(2).strip())
    # The wrapper re-ranks the inner strategy's candidates, so it may relabel exactly when the inner one may.
    return Strategy(name.strip(), wrap(inner), inner.needs_labeled,
                    None if inner.options is None else (*inner.options, *options), inner.relabels)


def get_mix(name: str) -> MixResolver | None:
    """The resolver of a mix name, or None when ``name`` is not one (plugins load only for unknown names)."""
    if name not in _MIXES and name not in _REGISTRY:
        _load_plugins()
    return _MIXES.get(name)


def available_strategies() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def _load_plugins() -> None:
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing plugin module is tolerated; a broken import inside one must surface.
            if exc.name != module and not module.startswith(f"{exc.name}."):
                raise


def get_strategy(name: str) -> Strategy:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        wrapped = _wrapped(name)
        if wrapped is not None:
            return wrapped
        wrappers = "".join(f", {w}(STRATEGY)" for w in sorted(_WRAPPERS))
        raise SelectionError(
            f"unknown strategy {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}{wrappers}"
        )
    return _REGISTRY[name]


def check_labeled(strategy: Strategy, ctx: SelectContext) -> None:
    if strategy.needs_labeled and ctx.labeled is None:
        raise SelectionError(
            f"strategy {strategy.name!r} needs the labelled set: pass labeled="
        )
