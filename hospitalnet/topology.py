"""Who is adjacent to whom, and the one edge-sign convention.

A :class:`Topology` is an undirected simple graph over the sites, in a fixed *site order* (the
order of the ``sites`` list it was built from, e.g. ``n1 .. n8``). Edges are stored as pairs
``(a, b)`` with ``a`` before ``b`` in site order, sorted. How bytes move along an edge is the
transport's business, not this module's.

The edge sign ``A_{i|j}`` of the consensus constraint ``A_{i|j} w_i + A_{j|i} w_j = 0`` is
defined here and nowhere else: :meth:`Topology.edge_sign` returns +1 when ``i`` comes before ``j``
in site order and -1 otherwise.

Builders (registry :data:`TOPOLOGIES`, selected by ``TopologyConfig.kind``):

- ``ring``            each site linked to the next one (and the last to the first).
- ``multiplex_ring``  ring plus links to the sites two places away (+-1 and +-2).
- ``complete``        every pair linked.
- ``random``          a seeded random *connected* graph with about ``random_degree`` mean degree.
- ``edges``           an explicit edge list (validated; may be disconnected or leave sites alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hospitalnet.config import TopologyConfig
from hospitalnet.errors import ConfigError
from hospitalnet.seeding import numpy_rng

Edge = tuple[str, str]


@dataclass(frozen=True)
class Topology:
    """An undirected graph over the sites in site order.

    Attributes
    ----------
    nodes:
        Site ids in site order.
    edges:
        Sorted pairs ``(a, b)``, ``a`` before ``b`` in site order, no duplicates, no self loops.
    """

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]
    _order: dict[str, int] = field(init=False, repr=False, compare=False)
    _adjacent: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        order = {site: k for k, site in enumerate(self.nodes)}
        adjacent: dict[str, list[str]] = {site: [] for site in self.nodes}
        for a, b in self.edges:
            adjacent[a].append(b)
            adjacent[b].append(a)
        object.__setattr__(self, "_order", order)
        object.__setattr__(
            self,
            "_adjacent",
            {s: tuple(sorted(ns, key=order.__getitem__)) for s, ns in adjacent.items()},
        )

    def order(self, site: str) -> int:
        """Position of ``site`` in site order."""
        return self._order[site]

    def neighbours(self, site: str) -> tuple[str, ...]:
        """The sites adjacent to ``site``, in site order."""
        return self._adjacent[site]

    def degree(self, site: str) -> int:
        return len(self._adjacent[site])

    def edge_sign(self, i: str, j: str) -> int:
        """``A_{i|j}``: +1 if ``i`` comes before ``j`` in site order, else -1 (THE convention)."""
        return 1 if self._order[i] < self._order[j] else -1

    def components(self) -> list[tuple[str, ...]]:
        """Connected components, each in site order, ordered by their first site."""
        seen: set[str] = set()
        out: list[tuple[str, ...]] = []
        for start in self.nodes:
            if start in seen:
                continue
            stack, comp = [start], []
            seen.add(start)
            while stack:
                site = stack.pop()
                comp.append(site)
                for nb in self._adjacent[site]:
                    if nb not in seen:
                        seen.add(nb)
                        stack.append(nb)
            out.append(tuple(sorted(comp, key=self._order.__getitem__)))
        return out

    def is_connected(self) -> bool:
        return len(self.components()) <= 1


def from_edges(sites: Sequence[str], edges: Iterable[Sequence[str]]) -> Topology:
    """A topology from an explicit edge list, validated.

    Raises
    ------
    ConfigError
        On an unknown site, a self loop or a duplicate edge (either direction), naming the edge.
    """
    sites = tuple(sites)
    if len(set(sites)) != len(sites):
        raise ConfigError(f"topology: duplicate site id in {list(sites)}")
    order = {site: k for k, site in enumerate(sites)}
    seen: set[Edge] = set()
    for raw in edges:
        if len(raw) != 2:
            raise ConfigError(f"topology.edges: {list(raw)}: an edge is a pair of site ids")
        a, b = str(raw[0]), str(raw[1])
        for site in (a, b):
            if site not in order:
                raise ConfigError(f"topology.edges: ({a}, {b}): unknown site {site!r}")
        if a == b:
            raise ConfigError(f"topology.edges: ({a}, {b}): self loop")
        pair = (a, b) if order[a] < order[b] else (b, a)
        if pair in seen:
            raise ConfigError(f"topology.edges: ({a}, {b}): duplicate edge")
        seen.add(pair)
    ordered = sorted(seen, key=lambda e: (order[e[0]], order[e[1]]))
    return Topology(nodes=sites, edges=tuple(ordered))


def _ring_offsets(sites: Sequence[str], offsets: Iterable[int]) -> Topology:
    n = len(sites)
    order = {site: k for k, site in enumerate(sites)}
    pairs: set[Edge] = set()
    for k in range(n):
        for off in offsets:
            a, b = sites[k], sites[(k + off) % n]
            if a != b:
                pairs.add((a, b) if order[a] < order[b] else (b, a))
    return from_edges(sites, sorted(pairs, key=lambda e: (order[e[0]], order[e[1]])))


def ring(sites: Sequence[str], cfg: TopologyConfig, seed: int) -> Topology:
    return _ring_offsets(sites, (1,))


def multiplex_ring(sites: Sequence[str], cfg: TopologyConfig, seed: int) -> Topology:
    return _ring_offsets(sites, (1, 2))


def complete(sites: Sequence[str], cfg: TopologyConfig, seed: int) -> Topology:
    return from_edges(sites, [(a, b) for k, a in enumerate(sites) for b in sites[k + 1 :]])


def random_connected(sites: Sequence[str], cfg: TopologyConfig, seed: int) -> Topology:
    """A random spanning tree (connected by construction) plus random extra edges.

    The number of edges is ``round(random_degree * N / 2)``, at least ``N - 1`` (the tree) and at
    most ``N (N - 1) / 2`` (complete). Same seed and sites -> same graph.
    """
    n = len(sites)
    rng = numpy_rng(seed, "topology", "random")
    perm = [sites[k] for k in rng.permutation(n)]
    order = {site: k for k, site in enumerate(sites)}

    def key(a: str, b: str) -> Edge:
        return (a, b) if order[a] < order[b] else (b, a)

    pairs: set[Edge] = set()
    for k in range(1, n):
        pairs.add(key(perm[k], perm[int(rng.integers(0, k))]))
    target = min(max(round(cfg.random_degree * n / 2), n - 1), n * (n - 1) // 2)
    missing = [key(a, b) for k, a in enumerate(sites) for b in sites[k + 1 :]]
    missing = [e for e in missing if e not in pairs]
    extra = rng.permutation(len(missing))[: max(target - len(pairs), 0)]
    pairs.update(missing[int(k)] for k in extra)
    return from_edges(sites, sorted(pairs, key=lambda e: (order[e[0]], order[e[1]])))


def explicit(sites: Sequence[str], cfg: TopologyConfig, seed: int) -> Topology:
    if cfg.edges is None:
        raise ConfigError("topology.edges: required when topology.kind is 'edges'")
    return from_edges(sites, cfg.edges)


TopologyBuilder = Callable[[Sequence[str], TopologyConfig, int], Topology]

TOPOLOGIES: dict[str, TopologyBuilder] = {
    "ring": ring,
    "multiplex_ring": multiplex_ring,
    "complete": complete,
    "random": random_connected,
    "edges": explicit,
}


def build_topology(cfg: TopologyConfig, sites: Sequence[str], seed: int) -> Topology:
    """The topology ``cfg`` describes over ``sites`` (in that site order)."""
    if not sites:
        raise ConfigError("topology: no sites")
    builder = TOPOLOGIES.get(cfg.kind)
    if builder is None:  # unreachable through TopologyConfig, kept for hand-built configs
        raise ConfigError(f"topology.kind: unknown topology {cfg.kind!r}")
    return builder(list(sites), cfg, seed)


def isolated(sites: Sequence[str]) -> Topology:
    """No edges at all (the ``local`` and ``pooled`` methods)."""
    return from_edges(sites, [])
