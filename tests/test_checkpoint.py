"""Checkpoints survive kills and corruption, and refuse another model or toolkit version."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from hospitalnet import __version__
from hospitalnet.checkpoint import (
    decode_rng_state,
    encode_rng_state,
    load_latest,
    save_checkpoint,
)
from hospitalnet.errors import CheckpointError
from hospitalnet.rundir import atomic_write_bytes

FP = "model-fp-abc"


def _tensors(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "model/conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "dual/n2": torch.randn(10, generator=g),
        "optim/momentum/conv.weight": torch.randn(4, 1, 3, 3, generator=g).half(),
        "counters": torch.tensor([step, 2 * step], dtype=torch.int64),
    }


def _save(folder, step: int, **kw):
    return save_checkpoint(folder, _tensors(step), {"local_step": step}, model_fingerprint=FP, **kw)


def _assert_is(ckpt, step: int) -> None:
    assert ckpt.meta == {"local_step": step}
    for name, t in _tensors(step).items():
        assert ckpt.tensors[name].dtype == t.dtype and torch.equal(ckpt.tensors[name], t), name


@pytest.mark.timeout(30)
def test_round_trip_restores_tensors_meta_and_rng_states(tmp_path):
    g = torch.Generator().manual_seed(11)
    torch.rand(3, generator=g)
    np_rng = np.random.default_rng(5)
    np_rng.random(3)
    meta = {
        "local_step": 40,
        "seq": {"n2": 5, "n3": 4},
        "torch_rng": encode_rng_state(g.get_state()),
        "numpy_rng": np_rng.bit_generator.state,  # plain ints and strings
    }
    views = torch.arange(12.0)
    path = save_checkpoint(
        tmp_path, {"a": views[:6], "b": views[6:]}, meta, model_fingerprint=FP
    )  # views of one storage are fine
    assert path.name == "ckpt-00000001.json"

    ckpt = load_latest(tmp_path, FP)
    assert ckpt is not None and ckpt.index == 1 and ckpt.toolkit_version == __version__
    assert torch.equal(ckpt.tensors["a"], torch.arange(6.0))
    assert ckpt.meta["seq"] == {"n2": 5, "n3": 4}

    restored = torch.Generator()
    restored.set_state(decode_rng_state(ckpt.meta["torch_rng"]))
    assert torch.equal(torch.rand(5, generator=restored), torch.rand(5, generator=g))
    np_restored = np.random.default_rng()
    np_restored.bit_generator.state = ckpt.meta["numpy_rng"]
    assert np.array_equal(np_restored.random(4), np_rng.random(4))


@pytest.mark.timeout(30)
def test_keeps_the_last_n_and_loads_the_newest(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "ckpt-00000004.json",
        "ckpt-00000004.safetensors",
        "ckpt-00000005.json",
        "ckpt-00000005.safetensors",
    ]
    _assert_is(load_latest(tmp_path, FP), 5)


@pytest.mark.timeout(30)
def test_empty_or_missing_folder_means_a_fresh_start(tmp_path):
    assert load_latest(tmp_path / "none", FP) is None
    assert load_latest(tmp_path, FP) is None


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


def _zero(path):
    path.write_bytes(b"")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "damage", [_truncate, _flip_bit, _zero], ids=["truncated", "bitflip", "empty"]
)
@pytest.mark.parametrize("which", ["safetensors", "json"])
def test_damaged_latest_falls_back_to_the_previous_with_a_warning(tmp_path, caplog, damage, which):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    damage(tmp_path / f"ckpt-00000002.{which}")
    with caplog.at_level(logging.WARNING, logger="hospitalnet.checkpoint"):
        ckpt = load_latest(tmp_path, FP)
    _assert_is(ckpt, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint 2 is unusable" in warnings[0]
    assert "falling back" in warnings[0]


@pytest.mark.timeout(30)
def test_bit_flip_inside_the_json_values_is_caught_by_the_record_checksum(tmp_path):
    _save(tmp_path, 1)
    path = _save(tmp_path, 2)
    record = json.loads(path.read_text())
    record["meta"]["local_step"] = 3  # still valid JSON, silently different
    path.write_text(json.dumps(record))
    _assert_is(load_latest(tmp_path, FP), 1)


@pytest.mark.timeout(30)
def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    _save(tmp_path, 1)
    _zero(tmp_path / "ckpt-00000001.safetensors")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*checksum|no usable.*bytes"):
        load_latest(tmp_path, FP)


@pytest.mark.timeout(30)
def test_kill_during_a_write_leaves_the_previous_checkpoint_valid(tmp_path):
    _save(tmp_path, 1)
    # A kill mid-way through checkpoint 2: the tensor temp file half written, no record yet.
    (tmp_path / ".ckpt-00000002.safetensors.x1y2.tmp").write_bytes(b"\x00" * 100)
    _assert_is(load_latest(tmp_path, FP), 1)
    # A kill after the tensor file but before the record: checkpoint 2 does not exist yet.
    atomic_write_bytes(tmp_path / "ckpt-00000002.safetensors", b"partial")
    (tmp_path / ".ckpt-00000002.json.z9.tmp").write_bytes(b'{"format": 1, "ind')
    _assert_is(load_latest(tmp_path, FP), 1)
    # The next save cleans up and goes on.
    path = _save(tmp_path, 3)
    assert not list(tmp_path.glob(".*.tmp"))
    _assert_is(load_latest(tmp_path, FP), 3)
    assert path.name == "ckpt-00000003.json"


@pytest.mark.timeout(30)
def test_a_first_checkpoint_interrupted_before_its_record_means_a_fresh_start(tmp_path):
    atomic_write_bytes(tmp_path / "ckpt-00000001.safetensors", b"partial")
    assert load_latest(tmp_path, FP) is None


@pytest.mark.timeout(30)
def test_checkpoint_of_another_model_is_refused(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="model fingerprint model-fp-abc.*other-fp"):
        load_latest(tmp_path, "other-fp")


@pytest.mark.timeout(30)
def test_checkpoint_of_another_toolkit_version_is_refused(tmp_path):
    save_checkpoint(tmp_path, _tensors(1), {}, model_fingerprint=FP, toolkit_version="0.2.5")
    with pytest.raises(CheckpointError, match=r"hospitalnet 0\.2\.5, this is 0\.1\.0"):
        load_latest(tmp_path, FP, expected_version="0.1.0")
    # Only major.minor matter: a patch release resumes.
    assert load_latest(tmp_path, FP, expected_version="0.2.0") is not None


@pytest.mark.timeout(30)
def test_meta_must_be_plain_json(tmp_path):
    with pytest.raises(ValueError, match="not plain JSON"):
        save_checkpoint(tmp_path, {}, {"x": object()}, model_fingerprint=FP)
    with pytest.raises(ValueError, match="not plain JSON"):
        save_checkpoint(tmp_path, {}, {"x": float("nan")}, model_fingerprint=FP)


def test_checkpoint_module_never_uses_torch_load_or_pickle():
    from pathlib import Path

    import hospitalnet.checkpoint as mod

    source = Path(mod.__file__).read_text()
    assert "torch.load(" not in source and "import pickle" not in source
