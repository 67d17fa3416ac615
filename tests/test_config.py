from pathlib import Path

import pytest

from hospitalnet.config import ExperimentConfig, load_config
from hospitalnet.errors import ConfigError
from hospitalnet.seeding import int_seed, numpy_rng


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("training:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: training\.batch_sise: unknown key"):
        load_config(p)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("ecl:\n  theta: 2.0\n")
    with pytest.raises(ConfigError, match=r"ecl\.theta"):
        load_config(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_seed_streams_are_named_and_independent():
    a = numpy_rng(0, "site", "n1").random(3)
    b = numpy_rng(0, "site", "n2").random(3)
    again = numpy_rng(0, "site", "n1").random(3)
    assert (a == again).all() and not (a == b).all()
    assert int_seed(1, "x") != int_seed(2, "x")


def test_every_shipped_config_loads():
    shipped = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(shipped) >= 3
    for path in shipped:
        cfg = load_config(path)
        assert cfg.methods, path.name


def test_moved_and_renamed_keys_name_their_replacement(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("ecl:\n  site_weighting: uniform\n")
    with pytest.raises(ConfigError, match=r"ecl: .*training\.site_weighting"):
        load_config(path)
    from hospitalnet.algorithms import make_algorithm

    with pytest.raises(ConfigError, match="ecl-admm.*renamed.*ecl-relaxed-pdmm"):
        make_algorithm("ecl-admm")
    assert load_config(None).training.site_weighting == "samples"
