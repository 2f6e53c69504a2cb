"""``index="auto"``: pick the kNN backend by estimated wall time (DESIGN.md §7; the model is in :mod:`.cost`).

HNSW is never chosen: on clustered embeddings its recall at affordable efSearch stays low and its build is
the slowest (§7).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from broaden.lsb.knn.backends import get_backend
from broaden.lsb.knn.cost import SMALL_POOL, exact_cost, ivf_cost


@dataclass
class Choice:
    backend: str
    reason: str
    estimates: dict = field(default_factory=dict)


def choose(n: int, dim: int, *, n_queries: int, memory_gb: float, cached: dict) -> Choice:
    """Backend for ``n_queries`` searches over ``n`` rows of dimension ``dim`` within ``memory_gb``.

    ``cached`` maps backend names to the metadata of valid saved indexes of this very pool.
    """
    exact = exact_cost(n, dim, n_queries)
    estimates = {"flat": round(exact, 2)}
    if n < SMALL_POOL:
        return Choice("flat", f"small pool ({n:,} rows): exact search is cheap", estimates)
    if "ivf" in cached or "ivfpq" in cached:
        name = "ivf" if "ivf" in cached else "ivfpq"
        p = cached[name]["params"]
        estimates[name] = round(ivf_cost(n, dim, n_queries, p["nlist"], p["codec"], built=True), 2)
        if estimates[name] < exact:
            return Choice(name, f"a saved {name} index of this unchanged pool exists: search only "
                          f"(~{estimates[name]:.3g} s vs exact ~{exact:.3g} s)", estimates)
    budget = memory_gb * 2**30
    name = "ivf"
    params = get_backend("ivf").default_params(n, dim, memory_gb=memory_gb, n_queries=max(n_queries, 1))
    if get_backend("ivf").memory_bytes(n, dim, params) > budget:
        name = "ivfpq"
        params = get_backend("ivfpq").default_params(n, dim, memory_gb=memory_gb, n_queries=max(n_queries, 1))
    cost = ivf_cost(n, dim, n_queries, params["nlist"], params["codec"])
    estimates[name] = round(cost, 2)
    fits = f"IVF{params['nlist']},{params['codec']} ({get_backend(name).memory_bytes(n, dim, params) / 2**30:.1f} GB " \
           f"of a {memory_gb:g} GB budget)"
    if cost < exact:
        return Choice(name, f"{n_queries:,} queries over {n:,} rows: build + search {fits} ~{cost:.3g} s "
                      f"beats exact ~{exact:.3g} s", estimates)
    return Choice("flat", f"{n_queries:,} queries over {n:,} rows: exact streamed search ~{exact:.3g} s "
                  f"beats building {fits} ~{cost:.3g} s", estimates)
