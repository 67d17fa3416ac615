"""FlatParams.fan_in_scale: sqrt(fan-in) per parameter, by hand for a small network."""

import math

import torch
from torch import nn

from hospitalnet.models.flat import FlatParams


def test_fan_in_scale_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(36, 3))
    flat = FlatParams(model, "tiny")
    scale = flat.fan_in_scale()
    expected = torch.cat(
        [
            torch.full((4 * 2 * 3 * 3,), math.sqrt(2 * 3 * 3)),  # conv weight: in x kh x kw
            torch.full((4,), math.sqrt(18)),  # conv bias: the weight before it
            torch.full((4,), math.sqrt(4)),  # GroupNorm weight (1-D): its length
            torch.full((4,), math.sqrt(4)),  # GroupNorm bias
            torch.full((3 * 36,), math.sqrt(36)),  # linear weight
            torch.full((3,), math.sqrt(36)),  # linear bias
        ]
    )
    assert scale.shape == flat.flat.shape
    assert torch.allclose(scale, expected)
