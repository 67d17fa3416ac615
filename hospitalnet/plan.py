"""The network plan of a deployment: who the sites are, who is adjacent, where they listen.

ECL needs a little global knowledge that one site's manifest does not hold: the *site order*
(it fixes every edge sign ``A_{i|j}``), the neighbours' degrees (the ``eta="auto"`` rule) and
the training-set sizes (``site_weighting: samples`` scales each loss by ``N p_i``). A plan file
gives it; every site of a network uses the same file::

    # network.yaml (YAML or JSON)
    sites:                      # in site order
      n1: {address: 10.0.0.1:50051, train_samples: 412}
      n2: {address: 10.0.0.2:50052, train_samples: 388}
      ...
    edges: [[n1, n2], [n1, n3], ...]
    server: {address: 10.0.0.9:50050}   # only FedAvg / FedProx: the aggregation server

Without a plan file a site builds one from its manifest alone (``network.address`` and
``network.neighbours``): site order = the ids sorted, its own edges only, training-set sizes
unknown. Sample weighting (ECL's and gossip's default) then refuses to start, naming the missing
``train_samples`` (:mod:`hospitalnet.assembly`); ``training.site_weighting: uniform`` trains with
every loss weight 1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hospitalnet.algorithms.fedavg import SERVER
from hospitalnet.config import read_yaml
from hospitalnet.data.manifest import SiteManifest
from hospitalnet.errors import ConfigError
from hospitalnet.rundir import atomic_write_bytes
from hospitalnet.topology import Topology, from_edges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkPlan:
    """Site order, edges, addresses and (when known) training-set sizes of a network."""

    sites: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    addresses: dict[str, str]
    train_samples: dict[str, int]
    server_address: str | None = None  # the FedAvg/FedProx server, if the network has one

    def topology(self) -> Topology:
        return from_edges(self.sites, self.edges)

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": {
                s: {
                    "address": self.addresses.get(s, ""),
                    **({"train_samples": self.train_samples[s]} if s in self.train_samples else {}),
                }
                for s in self.sites
            },
            "edges": [list(e) for e in self.edges],
            **({"server": {"address": self.server_address}} if self.server_address else {}),
        }


def load_plan(path: str | Path) -> NetworkPlan:
    """Read a plan file (YAML or JSON); every problem is one line naming the file and key."""
    data = read_yaml(path)  # JSON is YAML
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict) or not data["sites"]:
        raise ConfigError(f"{path}: sites: expected a mapping site id -> {{address, ...}}")
    unknown_top = set(data) - {"sites", "edges", "server"}
    if unknown_top:
        raise ConfigError(f"{path}: {sorted(unknown_top)[0]}: unknown key")
    server = data.get("server")
    if server is not None and (
        not isinstance(server, dict) or set(server) != {"address"} or not server["address"]
    ):
        raise ConfigError(f"{path}: server: expected {{address: HOST:PORT}}")
    if SERVER in data["sites"]:
        raise ConfigError(f"{path}: sites.{SERVER}: the id is reserved for the FedAvg server")
    sites, addresses, samples = [], {}, {}
    for site, info in data["sites"].items():
        if not isinstance(info, dict):
            raise ConfigError(f"{path}: sites.{site}: expected a mapping")
        unknown = set(info) - {"address", "train_samples"}
        if unknown:
            raise ConfigError(f"{path}: sites.{site}.{sorted(unknown)[0]}: unknown key")
        sites.append(str(site))
        if info.get("address"):
            addresses[str(site)] = str(info["address"])
        if "train_samples" in info:
            n = info["train_samples"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ConfigError(f"{path}: sites.{site}.train_samples: expected an integer >= 0")
            samples[str(site)] = n
    edges = data.get("edges") or []
    if not isinstance(edges, list):
        raise ConfigError(f"{path}: edges: expected a list of [a, b] pairs")
    try:
        topo = from_edges(sites, edges)
    except ConfigError as err:
        raise ConfigError(f"{path}: edges: {err}") from None
    return NetworkPlan(
        tuple(sites), topo.edges, addresses, samples, str(server["address"]) if server else None
    )


def write_plan(path: str | Path, plan: NetworkPlan) -> None:
    atomic_write_bytes(Path(path), (json.dumps(plan.to_json(), indent=2) + "\n").encode())


def plan_from_manifest(manifest: SiteManifest) -> NetworkPlan:
    """The plan one manifest implies: this site and its neighbours, its own edges only."""
    me = manifest.site
    sites = tuple(sorted({me, *manifest.network.neighbours}))
    edges = [tuple(sorted((me, j))) for j in manifest.network.neighbours]
    addresses = {me: manifest.network.address, **manifest.network.neighbours}
    return NetworkPlan(sites, from_edges(sites, edges).edges, addresses, {})


__all__ = ["NetworkPlan", "load_plan", "plan_from_manifest", "write_plan"]
