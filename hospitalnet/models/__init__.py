"""Networks for 14-label chest X-ray classification: 1-channel input, 14 logits, GroupNorm only.

BatchNorm is avoided on purpose: its running statistics are not trainable parameters (so they
would not take part in consensus), misbehave with heterogeneous sites and leak data statistics.
Models are built deterministically from an injected seed, never from the global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hospitalnet.config import ModelConfig
from hospitalnet.errors import ConfigError
from hospitalnet.labels import NUM_LABELS
from hospitalnet.models.invariant import make_thread_invariant


def _gn(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class SmallCNN(nn.Module):
    """Four stride-2 conv-GroupNorm-ReLU blocks, global average and max pooling, a linear head.

    Channels w/2, w, 2w, 4w: at 64 px and width 16 about 2 MFLOP per image forward, sized for a
    2-core CPU. The final map stays 4 x 4 at 64 px: a fifth stride-2 block (2 x 2) cost more and
    did not learn the one-pixel nodule below on either of two seeds.

    Average and max pooling are concatenated because average pooling alone dilutes a 1-2 px
    finding over the whole final map: on a synthetic one-pixel nodule (tests/models/
    test_small_findings.py) average pooling alone stayed at AUROC ~0.5 while average+max learned
    it. Average keeps diffuse findings (heart size, haze) easy.
    """

    def __init__(self, width: int = 32, groups: int = 8, num_labels: int = NUM_LABELS) -> None:
        super().__init__()
        chans = [1, max(width // 2, 4), width, 2 * width, 4 * width]
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                _gn(cout, groups),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * chans[-1], num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))


def _smallcnn(cfg: ModelConfig) -> nn.Module:
    return SmallCNN(cfg.width, cfg.groups)


def _resnet18(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=NUM_LABELS, norm_layer=lambda c: _gn(c, cfg.groups))
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _densenet121(cfg: ModelConfig) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_LABELS,
        norm=("group", {"num_groups": cfg.groups}),
        pretrained=False,
    )


MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "smallcnn": _smallcnn,
    "resnet18": _resnet18,
    "densenet121": _densenet121,
}


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """Build ``cfg.name`` with weights drawn from ``seed`` alone (the global RNG is untouched).

    Its convolutions are :class:`~hospitalnet.models.invariant.ThreadInvariantConv2d`, so that a
    training step gives the same bits at any CPU thread count.
    """
    try:
        builder = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(
            f"model.name: unknown model {cfg.name!r} (known: {', '.join(MODELS)})"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(cfg)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"model.name: {cfg.name} contains BatchNorm; use GroupNorm")
    return make_thread_invariant(model)
