"""Local objectives over torch models (the :class:`~hospitalnet.objective.LocalObjective` contract).

:class:`ChestXrayObjective` is a site's 14-label chest X-ray loss: masked BCE-with-logits over
decoded uint8 images kept in memory (decoded once, never per epoch). :class:`DatasetObjective`
wraps ANY torch ``Dataset`` of ``(x, y)`` pairs and any loss, so the trainer accepts other data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from hospitalnet.models.flat import FlatParams
from hospitalnet.threads import EVAL_QUANTUM, ThreadGovernor


def masked_bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known (non-NaN) label entries; unknown entries contribute nothing."""
    known = ~torch.isnan(labels)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known])


def minibatch_size(batch_size: int, n: int) -> int:
    """Images per minibatch from ``n`` images: a set smaller than the batch is one minibatch."""
    return min(batch_size, n)


class EpochSampler:
    """Shuffled epochs of minibatch indices from an injected generator."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator
        self.batch_size = minibatch_size(batch_size, n)
        self._order = torch.randperm(n, generator=generator)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self.n:
            self._order = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Where the sampler stands: the generator's state, this epoch's order, the position."""
        return {"generator": self.generator.get_state(), "order": self._order}, {"pos": self._pos}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, int]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (same next minibatches)."""
        order = tensors["order"]
        if order.shape != (self.n,):
            raise ValueError(f"sampler: saved order has {order.numel()} entries, not {self.n}")
        self.generator.set_state(tensors["generator"].clone())
        self._order = order.clone()
        self._pos = int(meta["pos"])


class ChestXrayObjective:
    """A site's loss f_i(w): masked BCE of ``model`` on ``images`` (uint8, N x 1 x S x S)."""

    def __init__(
        self,
        flat: FlatParams,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        threads: ThreadGovernor | None = None,
    ) -> None:
        if len(images) == 0:
            raise ValueError("ChestXrayObjective: no training images")
        self.flat = flat
        self.images = images
        self.labels = labels
        self.num_samples = len(images)
        self.sampler = EpochSampler(len(images), batch_size, generator)
        self.device = flat.flat.device
        self.threads = threads  # polled before every step: the machine's load may have changed

    def init_params(self) -> torch.Tensor:
        return self.flat.flat.detach().clone()

    def coupling_scale(self) -> torch.Tensor:
        """Per-parameter sqrt(fan-in) (``ecl.eta_scaling: sqrt_fan_in``)."""
        return self.flat.fan_in_scale()

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        if self.threads is not None:
            self.threads.poll()
        idx = self.sampler.next()
        x = self.images[idx].to(self.device, non_blocking=True).float().div_(255.0)
        y = self.labels[idx].to(self.device, non_blocking=True)
        self.flat.load(w)
        self.flat.grad.zero_()
        loss = masked_bce_with_logits(self.flat.model(x), y)
        loss.backward()
        return float(loss.detach()), self.flat.grad.clone()


class DatasetObjective:
    """Any torch ``Dataset`` returning ``(x, y)`` and any ``loss_fn(model(x), y)``.

    Use it to train other per-site data with the same algorithms::

        objectives = {site: DatasetObjective(FlatParams(make_model(), "mlp"), ds, loss, 32, gen)
                      for site, ds in datasets.items()}
        result = hospitalnet.simulation.run_network("ecl", objectives, "multiplex_ring", 1000, 0)
    """

    def __init__(
        self,
        flat: FlatParams,
        dataset: Dataset,
        loss_fn: Callable,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.flat, self.dataset, self.loss_fn = flat, dataset, loss_fn
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.sampler = EpochSampler(self.num_samples, batch_size, generator)

    def init_params(self) -> torch.Tensor:
        return self.flat.flat.detach().clone()

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        items = [self.dataset[int(i)] for i in self.sampler.next()]
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.stack([torch.as_tensor(b) for _, b in items])
        self.flat.load(w)
        self.flat.grad.zero_()
        loss = self.loss_fn(self.flat.model(x), y)
        loss.backward()
        return float(loss.detach()), self.flat.grad.clone()


@torch.inference_mode()
def predict_proba(
    flat: FlatParams,
    w: torch.Tensor,
    images: torch.Tensor,
    batch_size: int = 512,
    threads: ThreadGovernor | None = None,
) -> torch.Tensor:
    """Sigmoid probabilities [N, 14] (float32, CPU) of the model at ``w`` on uint8 ``images``.

    A short last minibatch is padded with blank images to a multiple of
    :data:`~hospitalnet.threads.EVAL_QUANTUM` (their outputs are dropped), so that every
    minibatch has a shape whose result does not depend on the thread count.
    """
    flat.load(w)
    model: nn.Module = flat.model
    out = []
    for start in range(0, len(images), batch_size):
        if threads is not None:
            threads.poll()
        x = images[start : start + batch_size].to(flat.flat.device).float().div_(255.0)
        n = len(x)
        pad = -n % EVAL_QUANTUM
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        out.append(torch.sigmoid(model(x)[:n]).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 14))
