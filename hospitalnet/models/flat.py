"""A module's trainable parameters as views into ONE flat vector (and its gradient likewise).

Algorithms work on flat vectors; with the parameters as views, moving a model in or out of the
network is one copy and the gradient needs no gathering. Buffers never take part.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn


class FlatParams:
    def __init__(self, model: nn.Module, name: str) -> None:
        self.model = model
        self.name = name
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.schema = [(n, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in params]
        total = sum(p.numel() for _, p in params)
        first = params[0][1]
        self.flat = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.flat)
        offset = 0
        for _, p in params:
            n = p.numel()
            self.flat[offset : offset + n].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)
            offset += n

    @property
    def numel(self) -> int:
        return self.flat.numel()

    def fan_in_scale(self) -> torch.Tensor:
        """sqrt(fan-in) of every parameter's tensor, as one flat vector (the ECL authors' KDD
        2020 code scales the coupling eta per tensor by it): a weight's fan-in is the product
        of its dimensions after the first (a 1-D weight, e.g. a norm's: its length); a bias
        takes the fan-in of the weight before it."""
        parts, last = [], 1
        for name, shape, _ in self.schema:
            if name.endswith("weight"):
                last = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            parts.append(torch.full((math.prod(shape),), math.sqrt(last), dtype=self.flat.dtype))
        return torch.cat(parts).to(self.flat.device)

    def load(self, w: torch.Tensor) -> None:
        """Make the module compute with ``w`` (no copy when ``w`` already is the flat buffer)."""
        if w.data_ptr() != self.flat.data_ptr():
            self.flat.copy_(w)

    def fingerprint(self) -> str:
        """Architecture name + parameter names, shapes and dtypes: both ends of an edge and every
        checkpoint must agree on it."""
        h = hashlib.sha256(self.name.encode())
        for n, shape, dtype in self.schema:
            h.update(f"{n}:{shape}:{dtype};".encode())
        return h.hexdigest()[:32]
