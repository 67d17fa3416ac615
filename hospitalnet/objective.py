"""The local objective: what a site's data and model look like to the training algorithms.

Every algorithm in :mod:`hospitalnet.algorithms` sees a site's model as ONE flat 1-D tensor ``w``
(float32 for the shipped models) and the site's data only through :class:`LocalObjective`. The
chest X-ray objective (a torch network + masked BCE over a site's images) lives in
``hospitalnet.training``; tests and users can plug in any other objective with the same three
members, e.g. :class:`QuadraticObjective` below.

Contract
--------
``num_samples``
    n_i, the number of training samples at the site. Used only for sample weighting
    (``p_i = n_i / sum_k n_k``) and for FedAvg's weighted average. Must be > 0.
``init_params()``
    A fresh flat initial parameter vector ``w0`` (1-D, contiguous, CPU or the training device).
    The caller draws it ONCE (from one site's objective or a model built with the run's seed) and
    gives the same ``w0`` to every site; algorithms never call it per site.
``loss_and_grad(w)``
    Draw one minibatch (from a generator injected into the objective at construction, so that the
    same seed gives the same batches), and return ``(loss, grad)``: the *unweighted mean* loss
    ``f_i(w)`` of that minibatch as a Python float and its gradient with respect to ``w`` as a new
    flat tensor of ``w``'s shape and dtype. It must not modify ``w`` and must not keep a reference
    to ``grad`` (the algorithm may scale it in place). Weight decay and sample weighting are NOT
    part of ``f_i``: the algorithms add them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LocalObjective(Protocol):
    """A site's training loss as a function of a flat parameter vector (see module docstring)."""

    num_samples: int

    def init_params(self) -> torch.Tensor:
        """A flat float 1-D initial parameter vector ``w0``."""
        ...

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss of one minibatch at ``w`` (unweighted mean) and its flat gradient."""
        ...


class QuadraticObjective:
    """``f(w) = 0.5 * ||w - c||^2`` (optionally plus Gaussian gradient noise).

    The reference problem of the algorithm tests: with exact gradients the pooled optimum of sites
    with centres ``c_i`` and sizes ``n_i`` is ``sum_i p_i c_i``. Also a cheap objective for
    measuring the simulation's own overhead.

    Parameters
    ----------
    centre:
        The minimiser ``c`` (1-D tensor; its dtype is the parameter dtype).
    num_samples:
        n_i used for sample weighting.
    noise:
        Standard deviation of Gaussian noise added to the gradient (0 = exact gradients).
    generator:
        The injected source of the noise; required when ``noise > 0``.
    """

    def __init__(
        self,
        centre: torch.Tensor,
        num_samples: int = 1,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if noise > 0 and generator is None:
            raise ValueError("QuadraticObjective: noise > 0 needs an injected generator")
        self.centre = centre.reshape(-1).contiguous()
        self.num_samples = int(num_samples)
        self.noise = float(noise)
        self.generator = generator

    def init_params(self) -> torch.Tensor:
        return torch.zeros_like(self.centre)

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        grad = w - self.centre
        loss = 0.5 * float(torch.dot(grad, grad))
        if self.noise > 0:
            noise = torch.randn(
                grad.shape, generator=self.generator, dtype=grad.dtype, device=grad.device
            )
            grad.add_(noise, alpha=self.noise)
        return loss, grad


class LinearObjective:
    """``f(w) = g . w``: the same constant gradient ``g`` wherever ``w`` is.

    Given to every site, it is a pure common mode (all sites want the same step): plain SGD moves
    by ``-mu g`` per step, so it measures how fast a method moves what every site agrees on
    (benchmarks/ecl_dynamics.py, the exchange-conservation test).
    """

    def __init__(self, g: torch.Tensor, num_samples: int = 1) -> None:
        self.g = g.reshape(-1).contiguous()
        self.num_samples = int(num_samples)

    def init_params(self) -> torch.Tensor:
        return torch.zeros_like(self.g)

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        return float(torch.dot(self.g, w)), self.g.clone()
