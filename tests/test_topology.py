import pytest

from hospitalnet.config import TopologyConfig
from hospitalnet.errors import ConfigError
from hospitalnet.topology import TOPOLOGIES, build_topology, from_edges

SITES = [f"n{k}" for k in range(1, 9)]


def build(kind, sites=SITES, seed=0, **kw):
    return build_topology(TopologyConfig(kind=kind, **kw), sites, seed)


def test_ring():
    t = build("ring")
    assert len(t.edges) == 8
    assert ("n1", "n2") in t.edges and ("n1", "n8") in t.edges
    assert all(t.degree(s) == 2 for s in SITES)
    assert t.neighbours("n1") == ("n2", "n8")


def test_multiplex_ring_links_one_and_two_places_away():
    t = build("multiplex_ring")
    assert len(t.edges) == 16
    assert t.neighbours("n1") == ("n2", "n3", "n7", "n8")
    assert all(t.degree(s) == 4 for s in SITES)


def test_small_rings_have_no_duplicate_edges():
    assert build("multiplex_ring", ["a", "b", "c", "d"]).edges == (
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    )  # fmt: skip
    assert build("ring", ["a", "b"]).edges == (("a", "b"),)
    assert build("ring", ["a"]).edges == ()


def test_complete():
    t = build("complete")
    assert len(t.edges) == 28 and all(t.degree(s) == 7 for s in SITES)


def test_edges_are_sorted_pairs_in_site_order():
    sites = ["n2", "n10", "n1"]  # site order is the list's order, not the names'
    t = from_edges(sites, [("n1", "n10"), ("n10", "n2")])
    assert t.edges == (("n2", "n10"), ("n10", "n1"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_graph_is_connected_seeded_and_has_the_mean_degree(seed):
    t = build("random", seed=seed, random_degree=3.0)
    assert t.is_connected()
    assert len(t.edges) == 12  # 3.0 * 8 / 2
    assert t == build("random", seed=seed, random_degree=3.0)


def test_random_graph_depends_on_the_seed_and_is_capped():
    graphs = {build("random", seed=s).edges for s in range(5)}
    assert len(graphs) > 1
    assert len(build("random", random_degree=100.0).edges) == 28
    assert build("random", random_degree=0.5).is_connected()  # at least a spanning tree


def test_edge_sign_is_antisymmetric_and_follows_site_order():
    t = from_edges(["n2", "n10", "n1"], [("n2", "n10")])
    assert t.edge_sign("n2", "n10") == 1 and t.edge_sign("n10", "n2") == -1
    assert t.edge_sign("n10", "n1") == 1


@pytest.mark.parametrize(
    "edges, message",
    [
        ([("n1", "n9")], r"\(n1, n9\): unknown site 'n9'"),
        ([("n3", "n3")], r"\(n3, n3\): self loop"),
        ([("n1", "n2"), ("n2", "n1")], r"\(n2, n1\): duplicate edge"),
    ],
)
def test_explicit_edges_are_validated(edges, message):
    with pytest.raises(ConfigError, match=message):
        build("edges", edges=edges)


def test_an_edge_is_a_pair():
    with pytest.raises(ConfigError, match="a pair"):
        from_edges(SITES, [("n1", "n2", "n3")])


def test_edges_kind_needs_a_list_and_components_are_found():
    with pytest.raises(ConfigError, match="topology.edges: required"):
        build("edges")
    t = build("edges", edges=[("n1", "n2"), ("n3", "n4")])
    assert t.components()[:3] == [("n1", "n2"), ("n3", "n4"), ("n5",)]
    assert t.degree("n8") == 0 and not t.is_connected()


def test_registry_covers_every_configurable_kind():
    kinds = set(TopologyConfig.model_fields["kind"].annotation.__args__)
    assert kinds == set(TOPOLOGIES)
