"""A budget allocation that follows what the returning labels show (issue 20).

Arms are strategies whose inputs exist: ``stat`` (least confidence, margin and entropy in equal parts,
the Stat-AL mix and the *default* arm), ``lsb-lt`` (needs a labelled set with embeddings), ``qbc`` (needs
committee columns), ``hw``, ``diverse`` (``diverse(entropy)``: entropy's top candidates spread by k-center
greedy; needs pool embeddings). Each arm's value per item (:mod:`broaden.auto.value`) gets a Gaussian
posterior, and the shares follow the probability that an arm beats the default:

    precision_a = 1/s0² + Σ_r w_r / se_{a,r}²,   mean_a = (m_a/s0² + Σ_r w_r v_{a,r} / se_{a,r}²) / precision_a,
    w_r = decay^age (age 0 = the latest round),   P_a = P(arm a is best),
    raw_a = max(0, P_a − P_default) for a ≠ default,   raw_default = 1 − Σ raw_a,
    share_a = floor + (1 − A·floor) · raw_a

Only the probability by which an arm beats the default moves budget to it: two arms the measurements cannot
tell apart (P ≈ ½ each) leave the budget with the default, where plain probability matching (Thompson
sampling) would split it evenly — in i.i.d. data that drifted a quarter to nearly half of the budget to
LSB-LT by round 4 at a cost in accuracy (BENCHMARKS.md). The prior is the error-clustering diagnostic: every
arm starts at the mean of all measured values, LSB-LT shifted by √2·s0·Φ⁻¹(p0), where p0 gives the
diagnostic's starting share before any measurement (cluster 0.5, mixed / too few bad cases 0.2) and is 0.02
for *isolated* (LSB-LT likely worse). ``s0`` is one round's typical standard error divided by
√prior_weight, so the prior weighs as much as ``prior_weight`` rounds (default 2). The floor keeps every
estimate learning; the decay lets a pattern that has been learnt (the refit model catches up) move budget
back. Seeded: the same inputs give the same shares. History entries without a standard error (plain
numbers) use the spread of all measured values as their noise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

ARMS = ("stat", "lsb-lt", "qbc", "hw", "diverse")
STAT_MIX = ("least_confident", "margin", "entropy")
#: The ``broaden select`` strategy of each arm but ``stat`` (which is :data:`STAT_MIX`).
ARM_STRATEGY = {"lsb-lt": "lsb-lt", "qbc": "qbc", "hw": "hw", "diverse": "diverse(entropy)"}
FLOOR = 0.02         # every arm keeps learning; in i.i.d. data a 0.05 floor of LSB-LT cost 0.001 accuracy (BENCHMARKS.md)
PRIOR_WEIGHT = 2.0   # the diagnostic weighs as much as two rounds of measured values
START_LSB_SHARE = {"cluster": 0.5, "mixed": 0.2, "too-few": 0.2, "isolated": 0.0}
DEFAULT_ARM = "stat"  # what keeps the budget while the measurements cannot tell the arms apart


@dataclass
class Allocation:
    """Shares per arm (summing to 1), the posterior behind them and the reasons, in words."""

    shares: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    posterior: dict[str, dict] = field(default_factory=dict)

    def mix(self) -> dict[str, float]:
        """The shares as a ``broaden select`` mix (``stat`` split over its three scores)."""
        out: dict[str, float] = {}
        for arm, share in self.shares.items():
            if arm == "stat":
                out.update({name: share / len(STAT_MIX) for name in STAT_MIX})
            else:
                out[ARM_STRATEGY[arm]] = share
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def arm_of(strategy: str) -> str:
    """The arm a selected item's strategy belongs to (``entropy`` → ``stat``, ``lsb`` → ``lsb-lt``,
    ``diverse(entropy)`` → ``diverse``)."""
    if strategy in STAT_MIX:
        return "stat"
    if strategy.startswith("diverse("):
        return "diverse"
    return "lsb-lt" if strategy in ("lsb", "lsb-lt") else strategy


def _with_floor(p: Mapping[str, float], floor: float) -> dict[str, float]:
    arms = list(p)
    floor = min(floor, 1.0 / len(arms))
    total = sum(p.values()) or 1.0
    return {a: floor + (1 - len(arms) * floor) * p[a] / total for a in arms}


def _observation(v) -> tuple[float, float | None]:
    """(value, se) from a history entry: a number, or ``{"value": …, "se": …}`` as round finish records."""
    if isinstance(v, Mapping):
        se = v.get("se")
        return float(v["value"]), (None if se is None or not np.isfinite(se) or se <= 0 else float(se))
    return float(v), None


def _default(arms: Sequence[str]) -> str:
    return DEFAULT_ARM if DEFAULT_ARM in arms else arms[0]


def _over_default(p: Mapping[str, float], default: str) -> dict[str, float]:
    """Raw shares (module docstring): each other arm gets max(0, P_a − P_default), the default the rest."""
    raw = {a: max(0.0, float(p[a]) - float(p[default])) for a in p if a != default}
    raw[default] = max(0.0, 1.0 - sum(raw.values()))
    return raw


def _start_probability(verdict: str, floor: float, arms: int) -> float:
    """P(LSB-LT is best) that gives the diagnostic's starting share after the floor is applied: with the
    other arms tied, raw = p − (1 − p)/(A − 1), so p = (raw·(A − 1) + 1)/A; *isolated* (raw 0) says
    LSB-LT is likely worse, p = 0.02."""
    floor = min(floor, 1.0 / arms)
    raw = (START_LSB_SHARE.get(verdict, 0.2) - floor) / (1 - arms * floor) if arms * floor < 1 else 0.0
    p = (raw * (arms - 1) + 1) / arms if raw > 0 else 0.02
    return float(np.clip(p, 0.02, 0.98))


def allocate(arms: Sequence[str], *, verdict: str | None = None, history: Sequence[Mapping] = (),
             floor: float = FLOOR, decay: float = 0.5, prior_weight: float = PRIOR_WEIGHT, draws: int = 4000,
             seed: int = 0) -> Allocation:
    """Shares of the next batch per arm (module docstring). ``history``: per past round, oldest first,
    ``{arm: value per item}`` or ``{arm: {"value": v, "se": se}}``; ``verdict``: the diagnostic's (cluster |
    mixed | too-few | isolated); ``prior_weight``: how many rounds the diagnostic's prior weighs."""
    from scipy.stats import norm

    arms = list(dict.fromkeys(arms))
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown:
        raise ValueError(f"arms must be a non-empty list of {', '.join(ARMS)}; got {arms}")
    if not 0 <= floor <= 1 or not 0 < decay <= 1 or prior_weight <= 0:
        raise ValueError(f"floor must be within 0 … 1, decay within (0, 1] and prior_weight > 0; "
                         f"got {floor}, {decay}, {prior_weight}")
    verdict = verdict or "too-few"
    if len(arms) == 1:
        return Allocation({arms[0]: 1.0}, [f"only {arms[0]} has its inputs"])
    observed = [(age, a, *_observation(v)) for age, rnd in enumerate(reversed(list(history)))
                for a, v in rnd.items() if a in arms and v is not None]
    observed = [o for o in observed if np.isfinite(o[2])]
    default = _default(arms)
    if not observed:  # the default keeps what the diagnostic does not give LSB-LT; other arms start at the floor
        raw = {a: 0.0 for a in arms}
        if "lsb-lt" in arms and default != "lsb-lt":
            raw["lsb-lt"] = START_LSB_SHARE.get(verdict, 0.2)
        raw[default] = 1.0 - sum(raw.values())
        shares = _with_floor(raw, floor)
        return Allocation(shares, [f"no measured value yet: starting shares from the diagnostic ({verdict})"])
    values = np.asarray([o[2] for o in observed])
    spread = float(values.std()) if len(values) > 1 and values.std() > 0 else max(abs(values).max(), 1e-12)
    base = float(values.mean())  # a common prior centre: only the differences between arms matter
    ses = [o[3] for o in observed if o[3] is not None]
    s0 = (float(np.median(ses)) if ses else spread) / np.sqrt(prior_weight)
    shift = np.sqrt(2) * s0 * norm.ppf(_start_probability(verdict, floor, len(arms))) if "lsb-lt" in arms else 0.0
    rng = np.random.default_rng(seed)
    posterior, samples = {}, []
    for a in arms:
        prior = base + (shift if a == "lsb-lt" else 0.0)
        mine = [(decay ** age / (se if se is not None else spread) ** 2, v) for age, arm, v, se in observed
                if arm == a]
        precision = 1 / s0 ** 2 + sum(w for w, _ in mine)
        mean = (prior / s0 ** 2 + sum(w * v for w, v in mine)) / precision
        sd = 1 / np.sqrt(precision)
        posterior[a] = {"mean": mean, "sd": sd, "prior": prior, "observations": len(mine)}
        samples.append(rng.normal(mean, sd, size=draws))
    best = np.bincount(np.argmax(np.stack(samples), axis=0), minlength=len(arms)) / draws
    shares = _with_floor(_over_default(dict(zip(arms, best)), default), floor)
    reasons = [f"{a}: value per item {posterior[a]['mean']:+.3g} ± {posterior[a]['sd']:.2g} "
               f"({posterior[a]['observations']} round(s); prior {posterior[a]['prior']:+.2g}), "
               f"P(best) {p:.2f} → share {shares[a]:.2f}"
               for a, p in zip(arms, best)]
    return Allocation(shares, reasons, posterior)
