"""The minibatch sampler: shuffled epochs, and a state that a checkpoint carries exactly."""

import pytest
import torch

from hospitalnet.training.torch_objectives import EpochSampler


def test_every_index_once_per_epoch_then_reshuffled():
    sampler = EpochSampler(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([sampler.next() for _ in range(3)])  # 9 of 10; the 10th waits
    assert sorted(epoch.tolist()) == sorted(set(epoch.tolist())) and len(epoch) == 9
    assert len(sampler.next()) == 3  # a new epoch starts rather than a short batch


def test_state_dict_resumes_the_same_minibatches():
    # prepare: a sampler mid-epoch, and its state
    sampler = EpochSampler(11, 4, torch.Generator().manual_seed(3))
    for _ in range(2):
        sampler.next()
    tensors, meta = sampler.state_dict()

    # execute: a fresh sampler (other seed) takes the state over
    resumed = EpochSampler(11, 4, torch.Generator().manual_seed(99))
    resumed.load_state_dict(tensors, meta)

    # assert: the next batches, across the epoch boundary, are the original's
    for _ in range(6):
        assert torch.equal(resumed.next(), sampler.next())
    with pytest.raises(ValueError, match="saved order has 11 entries, not 12"):
        EpochSampler(12, 4, torch.Generator()).load_state_dict(tensors, meta)
