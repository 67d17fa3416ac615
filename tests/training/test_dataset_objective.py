"""DatasetObjective: any torch Dataset, model and loss as a site's local objective."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from hospitalnet.models.flat import FlatParams
from hospitalnet.training.torch_objectives import DatasetObjective, EpochSampler


def _model() -> nn.Module:  # its initial weights never matter: the objective loads w
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def test_loss_and_grad_is_the_minibatch_mean_loss_and_its_autograd_gradient():
    # prepare: 10 samples, batches of 4 from a seeded stream, and an independent twin model
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, generator=gen), torch.randint(0, 2, (10,), generator=gen)
    objective = DatasetObjective(
        FlatParams(_model(), "mlp"), TensorDataset(x, y), nn.functional.cross_entropy, 4,
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    twin = _model()
    order = EpochSampler(10, 4, torch.Generator().manual_seed(7))
    w = objective.init_params() + 0.1  # not the model's own weights: the objective loads w
    before = w.clone()

    # execute: two minibatches
    results = [objective.loss_and_grad(w) for _ in range(2)]

    # assert: each equals plain autograd of the mean loss on the sampler's indices at w
    FlatParams(twin, "mlp").load(w)
    for loss, grad in results:
        idx = order.next()
        twin.zero_grad()
        expected = nn.functional.cross_entropy(twin(x[idx]), y[idx])
        expected.backward()
        reference = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
        assert loss == float(expected.detach())
        torch.testing.assert_close(grad, reference)
    assert objective.num_samples == 10
    assert torch.equal(w, before)  # w untouched
    assert results[0][1].data_ptr() != results[1][1].data_ptr()  # a new gradient each call
