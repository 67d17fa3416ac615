"""ECL, its PDMM variants and the baselines as pure state transitions, and the registry of presets.

Presets (``make_algorithm(name, ecl=..., fedprox=..., training=...)``); every method weights the
sites by ``training.site_weighting``:

- ``ecl``               two-way, delay-compensated edge consensus with one integrating dual per
                        edge (:mod:`hospitalnet.algorithms.ecl`; ``ecl.dual_gain`` and friends).
- ``ecl-pdmm``          linearised PDMM, theta 1 (:mod:`hospitalnet.algorithms.pdmm`).
- ``ecl-pdmm-damped``   the same damped to theta 0.8 (hospitalnet's ``ecl`` before the two-way
                        exchange; ``ecl.theta`` sets the damping).
- ``ecl-relaxed-pdmm``  theta 1/2 (formerly ``ecl-admm``; relaxed PDMM, not the authors' ADMM).
- ``ecl-isvr``          PDMM with rho 0 and eta by the ISVR rule, whatever ECLConfig says.
- ``ecl-authors-admm``  the authors' "ADMM": theta 1/2 towards the last received dual at every
                        step (``PDMM(dual_averaging=True)``).
- ``gossip``            D-PSGD with Metropolis-Hastings weights (same K, as many messages as ECL).
- ``fedavg``            server average every K local steps, and after the last one.
- ``fedprox``           FedAvg plus (mu_prox/2)||w - w_global||^2 (``FedProxConfig.mu_prox``).
- ``local``             no communication.
- ``pooled``            ``local`` on one site that holds all data (the caller builds that objective).
"""

from __future__ import annotations

from collections.abc import Callable

from hospitalnet.algorithms.base import (
    Algorithm,
    Outgoing,
    SiteContext,
    SiteWeighting,
    make_context,
    sgd_update,
    site_weights,
)
from hospitalnet.algorithms.ecl import ECL
from hospitalnet.algorithms.fedavg import SERVER, FedAvg, FedAvgServer
from hospitalnet.algorithms.gossip import Gossip
from hospitalnet.algorithms.local import Local
from hospitalnet.algorithms.pdmm import PDMM
from hospitalnet.config import ECLConfig, FedProxConfig, TrainingConfig
from hospitalnet.errors import ConfigError

#: Methods built on :class:`PDMM` (they read ecl.theta, eta, rho, dual_init, compression).
PDMM_METHODS = ("ecl-pdmm", "ecl-pdmm-damped", "ecl-relaxed-pdmm", "ecl-isvr", "ecl-authors-admm")
#: Names that were renamed, with what to use instead.
RENAMED = {
    "ecl-admm": "ecl-relaxed-pdmm (the same algorithm: PDMM relaxed to theta 1/2)",
}


def _pdmm(
    cfg: ECLConfig,
    weighting: SiteWeighting,
    name: str,
    averaging: bool = False,
    **override: float | str,
) -> PDMM:
    theta = float(override.get("theta", cfg.theta))
    eta = override.get("eta", cfg.eta)
    rho = float(override.get("rho", cfg.rho))
    return PDMM(
        theta=theta,
        eta="auto" if eta == "auto" else float(eta),
        rho=rho,
        site_weighting=weighting,
        dual_init=cfg.dual_init,
        name=name,
        compression=cfg.compression,
        topk_fraction=cfg.topk_fraction,
        dual_averaging=averaging,
        eta_scaling=cfg.eta_scaling,
    )


def _ecl(cfg: ECLConfig, weighting: SiteWeighting) -> ECL:
    return ECL(
        dual_gain=cfg.dual_gain,
        dual_warmup_steps=cfg.dual_warmup_steps,
        mixing_scale=cfg.mixing_scale,
        site_weighting=weighting,
    )


Preset = Callable[[ECLConfig, FedProxConfig, SiteWeighting], Algorithm]

PRESETS: dict[str, Preset] = {
    "ecl": lambda e, f, w: _ecl(e, w),
    "ecl-pdmm": lambda e, f, w: _pdmm(e, w, "ecl-pdmm", theta=1.0),
    "ecl-pdmm-damped": lambda e, f, w: _pdmm(e, w, "ecl-pdmm-damped"),
    "ecl-relaxed-pdmm": lambda e, f, w: _pdmm(e, w, "ecl-relaxed-pdmm", theta=0.5),
    "ecl-isvr": lambda e, f, w: _pdmm(e, w, "ecl-isvr", rho=0.0, eta="auto"),
    "ecl-authors-admm": lambda e, f, w: _pdmm(e, w, "ecl-authors-admm", True, theta=0.5),
    "gossip": lambda e, f, w: Gossip(site_weighting=w),
    "fedavg": lambda e, f, w: FedAvg(mu_prox=0.0, name="fedavg", site_weighting=w),
    "fedprox": lambda e, f, w: FedAvg(mu_prox=f.mu_prox, name="fedprox", site_weighting=w),
    "local": lambda e, f, w: Local(name="local"),
    "pooled": lambda e, f, w: Local(name="pooled"),
}


def check_method(name: str) -> None:
    """A ConfigError naming ``name`` unless it is a registered preset."""
    if name in RENAMED:
        raise ConfigError(f"methods: {name!r} was renamed: use {RENAMED[name]}")
    if name not in PRESETS:
        raise ConfigError(f"methods: unknown method {name!r} (known: {', '.join(PRESETS)})")


def make_algorithm(
    name: str,
    ecl: ECLConfig | None = None,
    fedprox: FedProxConfig | None = None,
    training: TrainingConfig | None = None,
) -> Algorithm:
    """The algorithm registered as ``name``, configured from the config sections."""
    check_method(name)
    weighting = (training or TrainingConfig()).site_weighting
    return PRESETS[name](ecl or ECLConfig(), fedprox or FedProxConfig(), weighting)


__all__ = [
    "ECL",
    "PDMM",
    "PDMM_METHODS",
    "PRESETS",
    "SERVER",
    "Algorithm",
    "FedAvg",
    "FedAvgServer",
    "Gossip",
    "Local",
    "Outgoing",
    "SiteContext",
    "check_method",
    "make_algorithm",
    "make_context",
    "sgd_update",
    "site_weights",
]
