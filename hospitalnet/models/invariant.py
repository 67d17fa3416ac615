"""Convolutions whose weight gradients do not depend on the number of CPU threads.

A run's bits should depend on its seed, not on how busy the machine was. Measured with torch
2.14 on the default SmallCNN: every forward and every other gradient of a training step are
bit-identical at one and two threads, but oneDNN's convolution weight gradient is not (it splits
the sum over the minibatch between threads; two of the four conv layers differed by ~1e-7).
:class:`ThreadInvariantConv2d` keeps oneDNN for the forward pass and the input gradient and takes
the weight and bias gradients from ATen's native kernel (``_slow_conv2d_backward``), which sums
the minibatch in one fixed order however many threads share the work. (It is not oneDNN's order:
gradients differ from oneDNN's by ~1e-7, so runs differ from earlier releases in the last bits.)

That is what lets :mod:`hospitalnet.threads` change a run's thread count while it trains. The
native kernel is used on the CPU for ungrouped, undilated convolutions with numeric padding
(every model in :data:`hospitalnet.models.MODELS`); any other convolution keeps torch's own
backward. The kernel is chosen per call rather than by switching oneDNN off globally, because
NVFlare's simulator runs the sites as threads of one process.

The property is measured, not promised by torch: :func:`same_bits_at_any_thread_count` checks it
for a model and its batch shapes, and :func:`hospitalnet.threads.governor_for` keeps the thread
count fixed where it fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_NATIVE_BACKWARD = getattr(torch.ops.aten, "_slow_conv2d_backward", None)


class _Conv2dFixedOrderWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if need_x:  # oneDNN: thread-invariant (measured), and the faster kernel
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1,
                (True, False, False),
            )[0]  # fmt: skip
        if need_w or need_b:
            _, grad_w, grad_b = _NATIVE_BACKWARD.output_mask(
                grad_out.contiguous(), x.contiguous(), weight.contiguous(),
                tuple(weight.shape[2:]), ctx.stride, ctx.padding, (False, need_w, need_b),
            )  # fmt: skip
        return grad_x, grad_w if need_w else None, grad_b if need_b else None, None, None


class ThreadInvariantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a weight gradient that is the same at any CPU thread count."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if not _uses_native_backward(self, input):
            return super()._conv_forward(input, weight, bias)
        if self.padding_mode != "zeros":
            pad = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return _Conv2dFixedOrderWeightGrad.apply(pad, weight, bias, self.stride, (0, 0))
        return _Conv2dFixedOrderWeightGrad.apply(input, weight, bias, self.stride, self.padding)


def _uses_native_backward(conv: nn.Conv2d, input: torch.Tensor) -> bool:
    return (
        _NATIVE_BACKWARD is not None
        and input.device.type == "cpu"
        and torch.is_grad_enabled()
        and conv.groups == 1
        and tuple(conv.dilation) == (1, 1)
        and not isinstance(conv.padding, str)
    )


def make_thread_invariant(model: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a :class:`ThreadInvariantConv2d`, in place.

    Only the class changes (same parameters, buffers, hooks and state_dict keys), so a model and
    its checkpoints are unaffected; returns ``model``.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = ThreadInvariantConv2d
    return model


def same_bits_at_any_thread_count(
    model: nn.Module,
    image_shape: tuple[int, ...],
    train_batches: Iterable[int],
    eval_batches: Iterable[int],
    threads: int,
    seed: int = 0,
) -> bool:
    """Whether ``model`` gives the same bits at 1 and ``threads`` torch threads: its outputs and
    parameter gradients on minibatches of ``train_batches`` images, and its inference outputs on
    ``eval_batches`` (random images of ``image_shape``, e.g. (1, 64, 64)). The model's ``.grad``
    is left alone; the caller's thread count is restored."""
    device = next(model.parameters()).device
    if device.type != "cpu" or threads <= 1:
        return True
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)

    def run(n: int, x: torch.Tensor, train: bool) -> list[torch.Tensor]:
        torch.set_num_threads(n)
        if not train:
            with torch.inference_mode():
                return [model(x).clone()]
        out = model(x)
        weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), params)
        return [out.detach().clone(), *grads]

    before = torch.get_num_threads()
    try:
        cases = [(b, True) for b in train_batches] + [(b, False) for b in eval_batches]
        for batch, train in cases:
            x = torch.rand((batch, *image_shape), generator=gen)
            ones, many = run(1, x, train), run(threads, x, train)
            if not all(torch.equal(a, b) for a, b in zip(ones, many)):
                return False
        return True
    finally:
        torch.set_num_threads(before)
