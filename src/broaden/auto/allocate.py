"""A budget allocation that follows what the returning labels show (issue 20).

Arms are strategies whose inputs exist: ``stat`` (least confidence, margin and entropy in equal parts,
the Stat-AL mix), ``lsb-lt`` (needs a labelled set with embeddings), ``qbc`` (needs committee columns),
``hw``. Round 1 has no measurement yet: the error-clustering diagnostic sets LSB-LT's starting share
(cluster 0.5, mixed / too few bad cases 0.2, isolated: the floor). From then on, Thompson sampling
(probability matching) over each arm's measured value per item (:mod:`broaden.auto.value`):

    posterior mean_a = (w0·m_a + Σ_r w_r v_{a,r}) / (w0 + Σ_r w_r),   sd_a = σ / √(w0 + Σ_r w_r),
    w_r = decay^age (age 0 = the latest round),   share_a = floor + (1 − A·floor) · P(arm a is best)

with σ the spread of all measured values and a prior m_a that starts LSB-LT one σ above (errors
cluster) or below (isolated) the other arms' mean. The floor keeps every estimate learning; the decay lets
a pattern that has been learnt (the refit model catches up) move budget back. Seeded: the same inputs
give the same shares.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

ARMS = ("stat", "lsb-lt", "qbc", "hw")
STAT_MIX = ("least_confident", "margin", "entropy")
START_LSB_SHARE = {"cluster": 0.5, "mixed": 0.2, "too-few": 0.2, "isolated": 0.0}
PRIOR_SHIFT = {"cluster": 1.0, "mixed": 0.0, "too-few": 0.0, "isolated": -1.0}


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
                out[arm] = share
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def arm_of(strategy: str) -> str:
    """The arm a selected item's strategy belongs to (``entropy`` → ``stat``, ``lsb`` → ``lsb-lt``)."""
    if strategy in STAT_MIX:
        return "stat"
    return "lsb-lt" if strategy in ("lsb", "lsb-lt") else strategy


def _with_floor(p: Mapping[str, float], floor: float) -> dict[str, float]:
    arms = list(p)
    floor = min(floor, 1.0 / len(arms))
    total = sum(p.values()) or 1.0
    return {a: floor + (1 - len(arms) * floor) * p[a] / total for a in arms}


def allocate(arms: Sequence[str], *, verdict: str | None = None, history: Sequence[Mapping[str, float]] = (),
             floor: float = 0.1, decay: float = 0.5, prior_weight: float = 1.0, draws: int = 4000,
             seed: int = 0) -> Allocation:
    """Shares of the next batch per arm (module docstring). ``history``: per past round, oldest first,
    ``{arm: value per item}``; ``verdict``: the diagnostic's (cluster | mixed | too-few | isolated)."""
    arms = list(dict.fromkeys(arms))
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown:
        raise ValueError(f"arms must be a non-empty list of {', '.join(ARMS)}; got {arms}")
    if not 0 <= floor <= 1 or not 0 < decay <= 1:
        raise ValueError(f"floor must be within 0 … 1 and decay within (0, 1]; got {floor}, {decay}")
    verdict = verdict or "too-few"
    if len(arms) == 1:
        return Allocation({arms[0]: 1.0}, [f"only {arms[0]} has its inputs"])
    observed = [(age, a, float(v)) for age, rnd in enumerate(reversed(list(history)))
                for a, v in rnd.items() if a in arms and v is not None and np.isfinite(v)]
    if not observed:
        lsb = START_LSB_SHARE.get(verdict, 0.2) if "lsb-lt" in arms else 0.0
        rest = [a for a in arms if a != "lsb-lt"]
        raw = {a: (lsb if a == "lsb-lt" else (1 - lsb) / len(rest)) for a in arms}
        shares = _with_floor(raw, floor)
        return Allocation(shares, [f"no measured value yet: starting shares from the diagnostic ({verdict})"])
    values = np.asarray([v for *_, v in observed])
    sigma = float(values.std()) if len(values) > 1 and values.std() > 0 else max(abs(values).max(), 1e-12)
    base = float(values.mean())
    rng = np.random.default_rng(seed)
    posterior, samples = {}, []
    for a in arms:
        prior = base + (PRIOR_SHIFT.get(verdict, 0.0) * sigma if a == "lsb-lt" else 0.0)
        mine = [(decay ** age, v) for age, arm, v in observed if arm == a]
        w = prior_weight + sum(wt for wt, _ in mine)
        mean = (prior_weight * prior + sum(wt * v for wt, v in mine)) / w
        sd = sigma / np.sqrt(w)
        posterior[a] = {"mean": mean, "sd": sd, "weight": w, "observations": len(mine)}
        samples.append(rng.normal(mean, sd, size=draws))
    best = np.bincount(np.argmax(np.stack(samples), axis=0), minlength=len(arms)) / draws
    shares = _with_floor(dict(zip(arms, best)), floor)
    reasons = [f"{a}: value per item {posterior[a]['mean']:+.3g} ± {posterior[a]['sd']:.2g} "
               f"({posterior[a]['observations']} round(s)), P(best) {p:.2f} → share {shares[a]:.2f}"
               for a, p in zip(arms, best)]
    return Allocation(shares, reasons, posterior)
