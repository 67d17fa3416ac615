"""Thread-count-invariant convolutions (hospitalnet.models.invariant): the same bits at 1, 2 and 3
torch threads, the same gradient as torch's own convolution up to rounding, and a check that
notices when a model's result does depend on the thread count."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hospitalnet.config import ModelConfig
from hospitalnet.models import build_model
from hospitalnet.models.invariant import (
    ThreadInvariantConv2d,
    make_thread_invariant,
    same_bits_at_any_thread_count,
)
from hospitalnet.threads import EVAL_QUANTUM
from hospitalnet.training.torch_objectives import predict_proba


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    model.zero_grad()
    out = model(x)
    nn.functional.binary_cross_entropy_with_logits(out, y).backward()
    return [out.detach().clone(), *(p.grad.clone() for p in model.parameters())]


def _batch(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, generator=gen)
    return x, (torch.rand(n, 14, generator=gen) > 0.8).float()


@pytest.mark.parametrize(
    ("name", "side", "batch"),
    [("smallcnn", 64, 16), ("smallcnn", 64, 128), ("resnet18", 32, 8)],
)
def test_a_training_step_gives_the_same_bits_at_1_2_and_3_threads(name, side, batch):
    model = build_model(ModelConfig(name=name), seed=0)
    x, y = _batch(batch, side)
    one = _step(model, x, y, 1)
    for threads in (2, 3):
        other = _step(model, x, y, threads)
        assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True)), threads


def test_the_gradient_is_torchs_own_up_to_rounding():
    # the trusted peer: torch's convolution with its own backward (oneDNN on the CPU)
    model = build_model(ModelConfig(), seed=0)
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, ThreadInvariantConv2d):
            module.__class__ = nn.Conv2d
    x, y = _batch(16, 64)
    ours, theirs = _step(model, x, y, 1), _step(plain, x, y, 1)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_only_the_class_changes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=True), nn.Conv2d(4, 4, 3, groups=2))
    keys = list(model.state_dict())
    make_thread_invariant(model)
    assert type(model[0]) is ThreadInvariantConv2d
    assert type(model[1]) is ThreadInvariantConv2d  # grouped: keeps torch's backward inside
    assert list(model.state_dict()) == keys
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()  # bias, input and grouped-conv gradients all flow
    assert x.grad is not None and model[0].bias.grad is not None


def test_padding_modes_other_than_zeros_keep_their_result():
    conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect")
    plain = copy.deepcopy(conv)
    make_thread_invariant(nn.Sequential(conv))
    x = torch.rand(4, 1, 9, 9)
    torch.testing.assert_close(conv(x), plain(x))


def test_evaluation_gives_the_same_bits_at_any_thread_count_for_every_minibatch_size():
    # unpadded minibatches of 5-11 images were not invariant with oneDNN (torch 2.14); padded to
    # a multiple of EVAL_QUANTUM every size is
    model = build_model(ModelConfig(), seed=0)
    from hospitalnet.models.flat import FlatParams

    flat = FlatParams(model, "smallcnn")
    w = flat.flat.detach().clone()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (600, 1, 64, 64), dtype=torch.uint8, generator=gen)
    for n in (1, 5, 7, 9, 11, EVAL_QUANTUM, 37, 600):
        torch.set_num_threads(1)
        one = predict_proba(flat, w, images[:n])
        torch.set_num_threads(2)
        two = predict_proba(flat, w, images[:n])
        assert one.shape == (n, 14)
        assert torch.equal(one, two), n


def test_the_check_passes_for_the_default_model_and_notices_a_thread_dependent_one():
    model = build_model(ModelConfig(), seed=0)
    assert same_bits_at_any_thread_count(model, (1, 64, 64), (16, 128), (16, 64), threads=2)

    class ThreadCounter(nn.Module):  # a model whose output depends on the thread count
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :14] * self.w * torch.get_num_threads()

    assert not same_bits_at_any_thread_count(ThreadCounter(), (1, 4, 4), (2,), (), threads=2)
    assert not same_bits_at_any_thread_count(ThreadCounter(), (1, 4, 4), (), (2,), threads=2)
    before = torch.get_num_threads()
    same_bits_at_any_thread_count(ThreadCounter(), (1, 4, 4), (2,), (), threads=3)
    assert torch.get_num_threads() == before
