"""The equal-budget groups of the protocol (paper §4.1.2) and the LSB variants the issue asks for.

Every group is one :class:`GroupSpec`; a variant is the ``Stat-AL+LSB-LT`` group with one option changed
and is named ``Stat-AL+LSB-LT[<variant>]``. Names are part of the result format (docs/results-format.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from broaden.errors import BroadenError

#: Statistical AL as a documented mix of the three uncertainty scores (equal shares, deduplicated).
STAT_AL_MIX = "least_confident,margin,entropy"
REFERENCE_GROUP = "Stat-AL"
ACTIVELAB_GROUP = "ActiveLab"
REFIT_SUFFIX = "(refit)"
LATENTS = ("tuned", "frozen", "finetuned")


class GroupError(BroadenError, ValueError):
    """Unknown group or variant name."""


@dataclass(frozen=True)
class GroupSpec:
    """How one group spends its budget.

    ``kind``: random | stat | hw | qbc | lsb | auto (the mix ``--strategy auto`` chooses each round) |
    activelab (relabel or label new with several annotators: :mod:`.annotators`) | mix
    (the ``broaden select`` mix in ``mix``: diversity and committee strategies, issue 17; the pool carries
    the ``latent`` embedding and bootstrap-committee columns, the labelled set its embeddings). LSB groups
    take ``lsb_share`` of the budget from broadening
    (``lookalike``: keep only neighbours with LT score > τ2) and fill the rest with Stat-AL. ``latent``:
    ``tuned`` = the classifier's hidden layer, ``frozen`` = the encoder output, ``finetuned`` = the [CLS]
    state of an encoder fine-tuned per repeat (the whole repeat then runs on it: :mod:`.finetune`).
    ``discrepancy`` None means the dataset's own kind. ``rank_by`` orders the neighbours when there are more
    than the share (a rank policy of :mod:`broaden.lsb.strategy`: ``nearest`` = every seed's 1st neighbour,
    then every 2nd, …).
    """

    name: str
    kind: str
    lookalike: bool = False
    latent: str = "tuned"
    discrepancy: str | None = None
    denoise: bool = False
    rank_by: str = "nearest"
    refit: bool = False               # select with the snapshot refit on the recent labelled batch
    lsb_share: float | None = None    # this group's LSB share (None: the run's --lsb-share)
    mix: str | None = None            # kind "mix": the select() mix it runs


BASE_ORDER = ("Random", "Stat-AL", "Stat-AL+LSB", "Stat-AL+LSB-LT", "HW", "QBC")
MIX_GROUPS = {"BALD": "bald", "Coreset": "coreset", "BADGE": "badge", "Cluster-Margin": "cluster_margin",
              "Diverse(entropy)": "diverse(entropy)", "TypiClust": "typiclust"}
VARIANTS = ("frozen", "tuned", "nominal", "ordinal", "denoised", "lt-ranked")


def _variant(base: GroupSpec, variant: str, dataset_discrepancy: str) -> GroupSpec | None:
    """``base`` with ``variant`` applied, or None when the variant would not change anything."""
    changes = {
        "frozen": {"latent": "frozen"}, "tuned": {"latent": "tuned"},
        "nominal": {"discrepancy": "nominal"}, "ordinal": {"discrepancy": "ordinal"},
        # LT as a ranking instead of a filter: the share is filled with the most lookalike neighbours.
        "denoised": {"denoise": True}, "lt-ranked": {"rank_by": "lookalike", "lookalike": False},
    }[variant]
    effective = {"latent": base.latent, "discrepancy": base.discrepancy or dataset_discrepancy,
                 "denoise": base.denoise, "rank_by": base.rank_by, "lookalike": base.lookalike}
    if all(effective[k] == v for k, v in changes.items()):
        return None
    return replace(base, name=f"{base.name}[{variant}]", **changes)


def _named(name: str, base: dict[str, GroupSpec], dataset_discrepancy: str) -> GroupSpec:
    """A base group, optionally with a modifier: ``NAME (refit)`` selects with the snapshot refit on the
    recent labelled batch (the fair control of DESIGN §3a; LSB still seeds from the recent batch scored
    out-of-sample by the snapshot, as a deployed model scored it); ``NAME@S`` gives an LSB group its own
    share S; ``NAME[VARIANT]`` is an LSB group with one of :data:`VARIANTS` (the names the tables print)."""
    stem, share = name.strip(), None
    refit = stem.endswith(REFIT_SUFFIX)  # either order: NAME@S (refit) or NAME (refit)@S
    stem = stem[:-len(REFIT_SUFFIX)].rstrip() if refit else stem
    if "@" in stem:
        stem, _, text = stem.rpartition("@")
        try:
            share = float(text)
        except ValueError:
            raise GroupError(f"bad LSB share in group {name!r}; expected e.g. Stat-AL+LSB-LT@0.5") from None
        if not 0 <= share <= 1:
            raise GroupError(f"LSB share in group {name!r} must be within 0 … 1")
        if stem.endswith(REFIT_SUFFIX):
            refit, stem = True, stem[:-len(REFIT_SUFFIX)].rstrip()
    variant = None
    if stem.endswith("]") and "[" in stem:
        stem, _, variant = stem[:-1].rpartition("[")
    if stem not in base:
        raise GroupError(f"unknown group {name!r}; choose from {', '.join(BASE_ORDER)}, Auto, {ACTIVELAB_GROUP}, "
                         f"{', '.join(MIX_GROUPS)}, optionally with "
                         f"'{REFIT_SUFFIX}' (not for Random) or '@SHARE' (LSB groups only)")
    spec = base[stem]
    if variant is not None:
        if variant not in VARIANTS or spec.kind != "lsb":
            raise GroupError(f"{name!r}: only LSB groups take a variant, one of {', '.join(VARIANTS)}")
        spec = _variant(spec, variant, dataset_discrepancy)
        if spec is None:
            raise GroupError(f"{name!r}: variant {variant!r} is the base configuration here; list {stem!r} instead")
    if share is not None and spec.kind != "lsb":
        raise GroupError(f"{name!r}: only LSB groups take a share (@S)")
    if refit and spec.kind == "random":
        raise GroupError(f"{name!r}: Random uses no model, so there is nothing to refit")
    if share is None and not refit:
        return spec
    return replace(spec, name=name.strip(), refit=refit, lsb_share=share)


def build_groups(
    *,
    latent: str = "tuned",
    denoise: bool = False,
    variants: str | list[str] | None = None,
    dataset_discrepancy: str = "ordinal",
    num_classes: int = 2,
    include: list[str] | None = None,
) -> list[GroupSpec]:
    """The base groups (optionally only ``include``) plus the requested variants of Stat-AL+LSB-LT.

    ``variants``: None/"none", "all", or a comma list of :data:`VARIANTS`. Variants that equal the base
    configuration (``tuned`` when the base latent is tuned; ``nominal`` vs ``ordinal`` with 2 classes,
    where both forms coincide) are skipped.
    """
    if latent not in LATENTS:
        raise GroupError(f"latent must be one of {', '.join(LATENTS)}, got {latent!r}")
    base = {
        "Random": GroupSpec("Random", "random"),
        "Stat-AL": GroupSpec("Stat-AL", "stat"),
        "Stat-AL+LSB": GroupSpec("Stat-AL+LSB", "lsb", latent=latent, denoise=denoise),
        "Stat-AL+LSB-LT": GroupSpec("Stat-AL+LSB-LT", "lsb", lookalike=True, latent=latent, denoise=denoise),
        "HW": GroupSpec("HW", "hw"),
        "QBC": GroupSpec("QBC", "qbc"),
        # Not in the default list: it holds out a validation sample from the pool to measure values on.
        "Auto": GroupSpec("Auto", "auto", lookalike=True, latent=latent, denoise=denoise),
        # Not in the default list: relabel or label new, trained on consensus labels (--annotators N).
        ACTIVELAB_GROUP: GroupSpec(ACTIVELAB_GROUP, "activelab"),
        # Diverse batches and epistemic uncertainty (issue 17), on the classifier's hidden layer (the input of
        # its last layer, where BADGE's gradient embedding is exact).
        **{name: GroupSpec(name, "mix", latent="tuned", mix=mix) for name, mix in MIX_GROUPS.items()},
    }
    names = list(BASE_ORDER) if include is None else list(include)
    if REFERENCE_GROUP not in names:
        names.insert(0, REFERENCE_GROUP)  # the paired tests compare every group with it
    groups = [_named(n, base, dataset_discrepancy) for n in names]
    if len({g.name for g in groups}) != len(groups):
        raise GroupError(f"a group is listed twice in {', '.join(names)}")
    if isinstance(variants, str):
        variants = list(VARIANTS) if variants.strip() == "all" else (
            [] if variants.strip() in ("", "none") else [v.strip() for v in variants.split(",") if v.strip()])
    bad = [v for v in variants or [] if v not in VARIANTS]
    if bad:
        raise GroupError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    for v in variants or []:
        if num_classes == 2 and v in ("nominal", "ordinal"):
            continue
        spec = _variant(base["Stat-AL+LSB-LT"], v, dataset_discrepancy)
        if spec is not None:
            groups.append(spec)
    return groups
