"""configs/chestxray14-gpu.yaml validates, and its model learns an easy finding at 224 px on the CPU."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hospitalnet.algorithms.base import sgd_update
from hospitalnet.config import load_config
from hospitalnet.errors import ConfigError
from hospitalnet.labels import NUM_LABELS
from hospitalnet.models import build_model
from hospitalnet.models.flat import FlatParams
from hospitalnet.seeding import torch_generator
from hospitalnet.training.torch_objectives import ChestXrayObjective, predict_proba
from hospitalnet.world import ensure_world

CONFIG = "configs/chestxray14-gpu.yaml"


def test_gpu_config_validates_with_the_real_data_settings():
    cfg = load_config(CONFIG)
    assert cfg.model.name == "densenet121"
    assert cfg.data.image_size == 224
    assert cfg.training.device == "cuda"
    assert "pooled" in cfg.methods and "ecl" in cfg.methods
    assert cfg.world.root and "CHESTXRAY14_SITES" in cfg.world.root


def _easy_finding(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """224 px noise; every other image has a bright 80 px square somewhere (finding 0 present).
    The other 13 findings are unknown (NaN), so only finding 0 is learned."""
    images = torch.randint(60, 120, (n, 1, 224, 224), dtype=torch.uint8, generator=gen)
    labels = torch.full((n, NUM_LABELS), float("nan"))
    labels[:, 0] = (torch.arange(n) % 2 == 0).float()
    for i in range(0, n, 2):
        r, c = torch.randint(0, 224 - 80, (2,), generator=gen).tolist()
        images[i, 0, r : r + 80, c : c + 80] = 230
    return images, labels


@pytest.mark.slow  # about 30 s on a shared 2-core CPU
def test_densenet121_learns_an_easy_finding_at_224px():
    # prepare: the GPU config's model, 16 training and 8 held-out images
    torch.set_num_threads(1)
    cfg = load_config(CONFIG)
    flat = FlatParams(build_model(cfg.model, 0), cfg.model.name)
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = _easy_finding(16, gen)
    test_x, test_y = _easy_finding(8, gen)
    present = test_y[:, 0] == 1
    obj = ChestXrayObjective(flat, train_x, train_y, 4, torch_generator(0, "test"))
    w = flat.flat.detach().clone()
    before = predict_proba(flat, w, test_x)[:, 0]

    # execute: 12 plain SGD steps of 4 images at the config's step size
    for _ in range(12):
        loss, grad = obj.loss_and_grad(w)
        assert np.isfinite(loss) and grad.shape == w.shape and torch.isfinite(grad).all()
        sgd_update(w, grad, cfg.training.lr, 1.0, cfg.training.weight_decay)
    after = predict_proba(flat, w, test_x)[:, 0]

    # assert: untrained, images with the finding get no higher probability (measured: 0.013
    # lower); trained, every held-out image with it ranks above every one without (AUROC 1.0,
    # chance 0.5) and its mean probability is far higher (measured: 0.30)
    gap_before = float(before[present].mean() - before[~present].mean())
    gap_after = float(after[present].mean() - after[~present].mean())
    assert gap_before < 0.02
    assert roc_auc_score(test_y[:, 0].numpy(), after.numpy()) == 1.0
    assert gap_after > gap_before + 0.15


def test_world_root_is_used_as_given(tmp_path, monkeypatch):
    (tmp_path / "partition.json").write_text(json.dumps({"sites": {}}))
    monkeypatch.setenv("MY_SITES", str(tmp_path))
    cfg = load_config(None).model_copy(
        update={"world": load_config(None).world.model_copy(update={"root": "${MY_SITES}"})}
    )
    assert ensure_world(cfg, progress=False) == tmp_path
    monkeypatch.delenv("MY_SITES")
    fallback = cfg.model_copy(
        update={"world": cfg.world.model_copy(update={"root": f"${{MY_SITES:-{tmp_path}}}"})}
    )
    assert ensure_world(fallback, progress=False) == tmp_path
    empty = cfg.model_copy(
        update={"world": cfg.world.model_copy(update={"root": str(tmp_path / "none")})}
    )
    with pytest.raises(ConfigError, match="world.root"):
        ensure_world(empty, progress=False)
