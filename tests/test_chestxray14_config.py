"""configs/chestxray14-gpu.yaml validates, and its model trains one step at 224 px on the CPU."""

import json

import pytest
import torch

from hospitalnet.config import load_config
from hospitalnet.errors import ConfigError
from hospitalnet.labels import NUM_LABELS
from hospitalnet.models import build_model
from hospitalnet.models.flat import FlatParams
from hospitalnet.seeding import torch_generator
from hospitalnet.training.torch_objectives import ChestXrayObjective
from hospitalnet.world import ensure_world

CONFIG = "configs/chestxray14-gpu.yaml"


def test_gpu_config_validates_with_the_real_data_settings():
    cfg = load_config(CONFIG)
    assert cfg.model.name == "densenet121"
    assert cfg.data.image_size == 224
    assert cfg.training.device == "cuda"
    assert "pooled" in cfg.methods and "ecl" in cfg.methods
    assert cfg.world.root and "CHESTXRAY14_SITES" in cfg.world.root


@pytest.mark.slow  # about 10-20 s on a shared 2-core CPU
def test_densenet121_takes_one_training_step_at_224px():
    torch.set_num_threads(1)
    cfg = load_config(CONFIG)
    flat = FlatParams(build_model(cfg.model, 0), cfg.model.name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 224, 224), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 2, (2, NUM_LABELS), generator=gen).float()
    obj = ChestXrayObjective(flat, images, labels, 2, torch_generator(0, "test"))
    w = flat.flat.detach().clone()
    loss, grad = obj.loss_and_grad(w)
    assert 0.0 < loss < 5.0
    assert grad.shape == w.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


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
