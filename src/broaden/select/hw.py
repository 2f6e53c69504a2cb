"""HW-style batch mining (DESIGN.md §2): one large, class-balanced batch with a share of easier items.

``hw`` fills ``n`` slots in two streaming passes over the pool (the first counts predicted classes,
the second keeps a running top-k per class), seeded and deterministic:

1. Relabel (only with ``labeled`` and ``dirty_bound``): labelled rows that confident learning flags as
   mislabelled — only as many of the worst as keep the suspected share of the labelled set at or below
   ``dirty_bound`` (:func:`broaden.select.cleaning.label_issue_mask`) — and that are in the pool come first,
   score = 1 − label quality. The probabilities in the labelled table must be out-of-sample. Every other
   labelled id is skipped (it is already annotated).
2. Per-class quotas by predicted class (argmax of ``probs``): ``proportions`` (weights per class) or, by
   default, the eligible pool's predicted-class distribution with every present class raised to at
   least ``floor`` (water-filling). Quotas are rounded by largest remainder and capped by what each
   class has; what a class cannot fill goes to the others by target share, then by class size.
3. Within each class, ``skip_top`` (fraction) of its most ambiguous items are skipped (for users who
   distrust the oracle on boundary cases); the class's hard slots take the next most uncertain
   (``uncertainty``: entropy, margin or least_confident).
4. ``easy_share`` of the slots are easier items: ``easy_source="band"`` samples uniformly (seeded hash
   of the id) among items whose normalised entropy lies in ``easy_band`` (lo, hi); any other value names
   a weaker model's probability column, whose most uncertain items are taken. Items skipped or taken in
   step 3 are never easy picks; a class short of easy items fills them with its next hard items.

Output order: relabel, then hard, then easy picks, each best-first; scores are the main model's
uncertainty (margin reported as the margin).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from broaden.errors import SelectionError
from broaden.io import IdSet, Pool, check_same_classes, id_keys, labels_array, list_matrix, load_scored
from broaden.select import scores as S
from broaden.select.cleaning import rank_label_issues
from broaden.select.mix import largest_remainder
from broaden.select.registry import SelectContext, option_number, register_strategy
from broaden.select.strategies import batch_probs, random_keys
from broaden.topk import TopK, merge_top, rank_order


@dataclass(frozen=True)
class HWOptions:
    proportions: np.ndarray | None = None
    floor: float = 0.05
    easy_share: float = 0.2
    easy_source: str = "band"
    easy_band: tuple[float, float] = (0.2, 0.6)
    skip_top: float = 0.0
    uncertainty: str = "entropy"
    dirty_bound: float | None = None

    @classmethod
    def from_options(cls, options: dict) -> HWOptions:
        def num(name, default, lo=0.0, hi=1.0):
            value = options.get(name)
            value = default if value is None else option_number(name, str(value), float)
            if value is not None and not lo <= value <= hi:
                raise SelectionError(f"hw option {name} must be within {lo:g} … {hi:g}, got {value:g}")
            return value

        band = options.get("easy_band") or cls.easy_band
        if isinstance(band, str):
            band = tuple(option_number("easy_band", x, float) for x in band.split(","))
        if len(band) != 2 or not 0 <= band[0] <= band[1] <= 1:
            raise SelectionError(f"hw option easy_band must be 'lo,hi' with 0 <= lo <= hi <= 1, got {band!r}")
        kind = options.get("uncertainty") or cls.uncertainty
        if kind not in S.UNCERTAINTY:
            raise SelectionError(f"hw option uncertainty must be one of {', '.join(S.UNCERTAINTY)}, got {kind!r}")
        return cls(
            proportions=_parse_proportions(options.get("proportions")),
            floor=num("floor", cls.floor), easy_share=num("easy_share", cls.easy_share),
            easy_source=options.get("easy_source") or cls.easy_source, easy_band=(float(band[0]), float(band[1])),
            skip_top=num("skip_top", cls.skip_top, hi=0.999), uncertainty=kind,
            dirty_bound=num("dirty_bound", None),
        )


def _parse_proportions(value) -> np.ndarray | dict | None:
    """``"0.4,0.3,0.2,0.1"``, ``"0:0.5,3:0.5"``, a list or a {class: weight} dict."""
    if value is None or isinstance(value, (dict, np.ndarray, list, tuple)):
        return value
    text = str(value).strip()
    parts = [p for p in text.split(",") if p.strip()]
    if ":" in text:
        pairs = [p.split(":") for p in parts]
        if any(len(kv) != 2 for kv in pairs):
            raise SelectionError(f"hw option proportions must look like '0:0.5,3:0.5', got {text!r}")
        return {option_number("proportions", k, int): option_number("proportions", v, float) for k, v in pairs}
    return np.asarray([option_number("proportions", x, float) for x in parts])


def _weights(proportions, num_classes: int) -> np.ndarray:
    if isinstance(proportions, dict):
        w = np.zeros(num_classes)
        for c, v in proportions.items():
            if not 0 <= int(c) < num_classes:
                raise SelectionError(f"hw proportions name class {c}, but the pool has classes 0..{num_classes - 1}")
            w[int(c)] = v
    else:
        w = np.asarray(proportions, dtype=np.float64)
        if w.shape != (num_classes,):
            raise SelectionError(f"hw proportions give {w.size} weights; the pool has {num_classes} classes")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise SelectionError(f"hw proportions must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def floored_shares(counts: np.ndarray, floor: float) -> np.ndarray:
    """Shares proportional to ``counts`` with every present class raised to at least ``floor``."""
    present = counts > 0
    if floor * present.sum() > 1:
        raise SelectionError(f"hw floor {floor:g} × {int(present.sum())} classes exceeds the whole batch")
    t = np.where(present, counts / max(counts.sum(), 1), 0.0)
    fixed = np.zeros(len(t), dtype=bool)
    while True:
        low = present & ~fixed & (t < floor)
        if not low.any():
            return t
        fixed |= low
        t[fixed] = floor
        rest = present & ~fixed
        t[rest] = counts[rest] / counts[rest].sum() * (1 - floor * fixed.sum()) if rest.any() else 0.0


def allocate(total: int, shares: np.ndarray, caps: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Integer quotas ≈ ``total × shares`` capped by ``caps``; the overflow goes by ``shares`` and then
    by ``fallback`` weights to classes with room left."""
    quota = np.zeros(len(shares), dtype=np.int64)
    for weights in (shares, fallback):
        while (left := total - int(quota.sum())) > 0:
            room = caps - quota
            w = np.where(room > 0, weights, 0.0)
            if w.sum() <= 0:
                break
            quota += np.minimum(largest_remainder(left, w), room)
    return quota


def _labelled_part(pool, n: int, ctx: SelectContext, o: HWOptions):
    """Every labelled id (never picked as new), and the flagged ones in the pool to relabel, best-first."""
    c = ctx.columns
    lab = load_scored(ctx.labeled, columns=c, what="labelled table",
                      require=("id", "label", "probs") if o.dirty_bound is not None else ("id",))
    keys = id_keys(lab.column(c.id))
    if o.dirty_bound is None:
        return keys, (np.empty(0, keys.dtype), np.empty(0))
    labels = labels_array(lab.column(c.label))
    idx, quality = rank_label_issues(labels, list_matrix(lab.column(c.probs), dtype=np.float64),
                                     dirty_bound=o.dirty_bound)
    cand, score = keys[idx], 1.0 - quality
    ok = ~ctx.exclude.contains(cand)
    cand, score = cand[ok], score[ok]
    if cand.size:
        inpool = Pool.of(pool, c).contains(cand, ctx.batch_size)
        cand, score = cand[inpool], score[inpool]
    return keys, (cand[:n], score[:n])


def hw_strategy(pool, n: int, ctx: SelectContext):
    """HW-style balanced batch mining; see the module docstring for every option."""
    o = HWOptions.from_options(ctx.options)
    c = ctx.columns
    exclude = ctx.exclude
    relabel = (np.empty(0, np.int64), np.empty(0))
    if ctx.labeled is not None:
        check_same_classes(ctx.labeled, pool, c)
        labelled, relabel = _labelled_part(pool, n, ctx, o)
        exclude = exclude.union(labelled)
    elif o.dirty_bound is not None:
        raise SelectionError("hw option dirty_bound needs the labelled set: pass labeled=")
    m = n - len(relabel[0])
    unc, sign = S.UNCERTAINTY[o.uncertainty], S.UNCERTAINTY_SIGN[o.uncertainty]
    weak = None if o.easy_source == "band" else o.easy_source

    # Pass 1: eligible items per predicted class.
    counts = ctx.runner.fold(pool, c, init=lambda: None, step=_count_step(c.probs), merge=_add_counts,
                             prob_cols=[c.probs], exclude=exclude, batch_size=ctx.batch_size,
                             description="hw: counting classes")
    if counts is None or m <= 0:
        return _concat([relabel])
    C = len(counts)
    skipped = np.floor(o.skip_top * counts).astype(np.int64)
    avail = counts - skipped
    shares = floored_shares(counts, o.floor) if o.proportions is None else _weights(o.proportions, C)
    quota = allocate(min(m, int(avail.sum())), shares, avail, counts.astype(np.float64))
    easy = largest_remainder(int(round(o.easy_share * quota.sum())), quota)
    hard = quota - easy

    # Pass 2: per class, the most uncertain (skip + quota) and the best easy candidates.
    depth = skipped + quota
    easy_depth = depth if o.easy_share > 0 else np.zeros(C, int)
    lo, hi = o.easy_band

    def init():
        return [TopK(int(k)) for k in depth], [TopK(int(k)) for k in easy_depth]

    def step(tops, keys, batch):
        hard_top, easy_top = tops
        if not len(keys):
            return tops
        p = batch_probs(batch, c.probs)
        cls = p.argmax(axis=1)
        score = unc(p)
        if weak:
            easy_pri = sign * unc(batch_probs(batch, weak))
            in_band = np.ones(len(keys), dtype=bool)
        else:
            ne = S.normalized_entropy(p)
            easy_pri, in_band = random_keys(keys, ctx.seed), (ne >= lo) & (ne <= hi)
        for k in range(C):
            sel = cls == k
            hard_top[k].push(sign * score[sel], keys[sel], score[sel])
            both = sel & in_band
            easy_top[k].push(easy_pri[both], keys[both], score[both])
        return tops

    def merge(a, b):
        return tuple([merge_top(x, y) for x, y in zip(pa_, pb_)] for pa_, pb_ in zip(a, b))

    hard_top, easy_top = ctx.runner.fold(
        pool, c, init=init, step=step, merge=merge, prob_cols=[c.probs] + ([weak] if weak else []),
        exclude=exclude, batch_size=ctx.batch_size, description="hw: mining")

    hard_parts, easy_parts = [], []
    for k in range(C):
        h_ids, _ = hard_top[k].result()
        h_score = hard_top[k].extra()
        s0, h = int(skipped[k]), int(hard[k])
        hard_parts.append((h_ids[s0:s0 + h], h_score[s0:s0 + h]))
        taken = IdSet(h_ids[:s0 + h])
        e_ids, _ = easy_top[k].result()
        e_score = easy_top[k].extra()
        if e_ids.size:
            keep = ~taken.contains(e_ids)
            e_ids, e_score = e_ids[keep][: easy[k]], e_score[keep][: easy[k]]
        short = int(easy[k]) - len(e_ids)
        if short > 0:  # not enough easy candidates: the class's next hard items fill the slots
            rest = ~IdSet(e_ids).contains(h_ids[s0 + h:])
            e_ids = np.concatenate([e_ids, h_ids[s0 + h:][rest][:short]])
            e_score = np.concatenate([e_score, h_score[s0 + h:][rest][:short]])
        easy_parts.append((e_ids, e_score))
    return _concat([relabel, _ranked(hard_parts, sign), _ranked(easy_parts, sign)])


def _count_step(col: str):
    def step(counts, keys, batch):
        if not len(keys):
            return counts
        p = batch_probs(batch, col)
        bc = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
        return bc if counts is None else counts + bc

    return step


def _add_counts(a, b):
    return b if a is None else a if b is None else a + b


def _ranked(parts, sign: float):
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    sc = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts]) if parts else np.empty(0)
    order = rank_order(sign * sc, ids)
    return ids[order], sc[order]


def _concat(parts):
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


register_strategy("hw", hw_strategy, options=tuple(f.name for f in fields(HWOptions)))
