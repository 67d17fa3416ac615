"""ECL (PDMM/ADMM) and the baselines as pure state transitions, and the registry of presets.

Presets (``make_algorithm(name, ecl=..., fedprox=...)``):

- ``ecl``       ECL with the settings of ``ECLConfig`` (default: PDMM damped to theta 0.8, eta by
                the ISVR rule, no proximity term, sample weighting, duals initialised at A w0).
- ``ecl-pdmm``  the same with theta = 1 (undamped PDMM; for synchronous runs).
- ``ecl-admm``  the same with theta = 1/2 (ADMM / Douglas-Rachford).
- ``ecl-isvr``  the same with rho = 0 and eta = "auto" (ECL-ISVR, whatever ECLConfig says).
- ``gossip``    D-PSGD with Metropolis-Hastings weights (same K, same message count as ECL).
- ``fedavg``    server average weighted by n_i every K local steps.
- ``fedprox``   FedAvg plus (mu_prox/2)||w - w_global||^2 (``FedProxConfig.mu_prox``).
- ``local``     no communication.
- ``pooled``    ``local`` on one site that holds all data (the caller builds that objective).
"""

from __future__ import annotations

from collections.abc import Callable

from hospitalnet.algorithms.base import (
    Algorithm,
    Outgoing,
    SiteContext,
    make_context,
    sgd_update,
    site_weights,
)
from hospitalnet.algorithms.ecl import ECL
from hospitalnet.algorithms.fedavg import SERVER, FedAvg, FedAvgServer
from hospitalnet.algorithms.gossip import Gossip
from hospitalnet.algorithms.local import Local
from hospitalnet.config import ECLConfig, FedProxConfig
from hospitalnet.errors import ConfigError


def _ecl(cfg: ECLConfig, name: str, **override: object) -> ECL:
    settings = cfg.model_dump() | override
    return ECL(
        theta=float(settings["theta"]),  # type: ignore[arg-type]
        eta=settings["eta"],  # type: ignore[arg-type]
        rho=float(settings["rho"]),  # type: ignore[arg-type]
        site_weighting=settings["site_weighting"],  # type: ignore[arg-type]
        dual_init=settings["dual_init"],  # type: ignore[arg-type]
        name=name,
        compression=settings["compression"],  # type: ignore[arg-type]
        topk_fraction=float(settings["topk_fraction"]),  # type: ignore[arg-type]
    )


Preset = Callable[[ECLConfig, FedProxConfig], Algorithm]

PRESETS: dict[str, Preset] = {
    "ecl": lambda e, f: _ecl(e, "ecl"),
    "ecl-pdmm": lambda e, f: _ecl(e, "ecl-pdmm", theta=1.0),
    "ecl-admm": lambda e, f: _ecl(e, "ecl-admm", theta=0.5),
    "ecl-isvr": lambda e, f: _ecl(e, "ecl-isvr", rho=0.0, eta="auto"),
    "gossip": lambda e, f: Gossip(site_weighting=e.site_weighting),
    "fedavg": lambda e, f: FedAvg(mu_prox=0.0, name="fedavg"),
    "fedprox": lambda e, f: FedAvg(mu_prox=f.mu_prox, name="fedprox"),
    "local": lambda e, f: Local(name="local"),
    "pooled": lambda e, f: Local(name="pooled"),
}


def make_algorithm(
    name: str, ecl: ECLConfig | None = None, fedprox: FedProxConfig | None = None
) -> Algorithm:
    """The algorithm registered as ``name``, configured from the config sections."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"methods: unknown method {name!r} (known: {', '.join(PRESETS)})")
    return preset(ecl or ECLConfig(), fedprox or FedProxConfig())


__all__ = [
    "ECL",
    "PRESETS",
    "SERVER",
    "Algorithm",
    "FedAvg",
    "FedAvgServer",
    "Gossip",
    "Local",
    "Outgoing",
    "SiteContext",
    "make_algorithm",
    "make_context",
    "sgd_update",
    "site_weights",
]
