"""The world a run trains on: world.seed pairs training seeds on one world; the strong world's
sites, loaded through their own loaders, really lack their findings."""

import hashlib
import json
from pathlib import Path

import pytest

from hospitalnet.config import ExperimentConfig, PartitionConfig, WorldConfig, validate
from hospitalnet.data.profiles import STRONG_PROFILE
from hospitalnet.errors import ConfigError
from hospitalnet.labels import LABEL_INDEX
from hospitalnet.world import ensure_world, load_world, world_dir, world_seed

TINY_STRONG = {
    "world": {"patients": 240, "image_size": 32},
    "partition": {"profile": "strong"},
    "data": {"image_size": 16},
}


def _cfg(
    seed: int, world_seed_: int | None, cache: Path | None = None, **extra
) -> ExperimentConfig:
    world = {**TINY_STRONG["world"], "seed": world_seed_}
    if cache is not None:
        world["cache_dir"] = str(cache)
    return validate(
        ExperimentConfig, {**TINY_STRONG, **extra, "seed": seed, "world": world}, source="test"
    )


def _files(root: Path) -> dict[str, bytes]:
    """What makes the world: the partition summary, every site's image list and manifest."""
    paths = [root / "partition.json", *sorted((root / "sites").glob("*/images.csv"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


# ------------------------------------------------------------------------------- the config


def test_world_seed_is_validated():
    for value, message in ((-1, "greater than or equal to 0"), ("x", "valid integer")):
        with pytest.raises(ConfigError, match=rf"^c\.yaml: world\.seed: .*{message}"):
            validate(ExperimentConfig, {"world": {"seed": value}}, source="c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml: world: .*world\.seed .* world\.root"):
        validate(ExperimentConfig, {"world": {"seed": 1, "root": "/x"}}, source="c.yaml")
    assert WorldConfig().seed is None


def test_world_seed_none_keeps_todays_folders():
    # Before world.seed existed, a world's folder was named by this digest of its settings.
    def before(seed: int) -> str:
        settings = {
            "world": {"patients": 3000, "image_size": 128},
            "partition": PartitionConfig().model_dump(),
            "seed": seed,
            "version": 4,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    base = Path("/cache/world")
    default = ExperimentConfig(world=WorldConfig(cache_dir=str(base)))
    assert world_dir(default) == base
    for seed in (1, 7):
        cfg = ExperimentConfig(seed=seed, world=WorldConfig(cache_dir=str(base)))
        assert world_dir(cfg) == base.with_name(f"world-{before(seed)}")


def test_world_seed_names_the_world_whatever_the_training_seed():
    base = "/cache/world"
    paired = [ExperimentConfig(seed=s, world=WorldConfig(seed=3, cache_dir=base)) for s in (0, 5)]
    assert world_seed(paired[0]) == world_seed(paired[1]) == 3
    assert world_dir(paired[0]) == world_dir(paired[1])
    # world.seed 3 is the world a run with seed 3 made before: the same folder
    assert world_dir(paired[0]) == world_dir(
        ExperimentConfig(seed=3, world=WorldConfig(cache_dir=base))
    )
    assert world_dir(
        ExperimentConfig(seed=0, world=WorldConfig(seed=4, cache_dir=base))
    ) != world_dir(paired[0])


# -------------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Three tiny strong worlds in separate caches: training seeds 1 and 2 on world seed 0, and
    training seed 1 with no world seed (the world of seed 1)."""
    tmp = tmp_path_factory.mktemp("worlds")
    made = {}
    for name, seed, wseed in (("a", 1, 0), ("b", 2, 0), ("own", 1, None)):
        cfg = _cfg(seed, wseed, tmp / name / "world")
        made[name] = (cfg, ensure_world(cfg, progress=False))
    return made


def test_different_training_seeds_on_one_world_seed_get_the_same_world(worlds):
    (_, a), (_, b), (_, own) = worlds["a"], worlds["b"], worlds["own"]
    assert _files(a) == _files(b)
    assert _files(a)["partition.json"] != _files(own)["partition.json"]
    assert json.loads((a / "partition.json").read_text())["seed"] == 0
    assert json.loads((own / "partition.json").read_text())["seed"] == 1


def test_strong_world_sites_as_loaded_lack_their_findings(worlds):
    cfg, root = worlds["a"]
    world = load_world(cfg, root, progress=False)
    assert set(world.train) == {s.site for s in STRONG_PROFILE.sites}
    for site in STRONG_PROFILE.sites:
        for split in (world.train[site.site], world.local_test[site.site]):
            assert len(split) > 0
            lacking = split.labels[:, [LABEL_INDEX[n] for n in sorted(site.absent)]]
            assert not (lacking == 1).any(), site.site
    # scored on all 14 labels: the shared global test set holds every finding
    assert ((world.global_test.labels == 1).sum(dim=0) > 0).all()
    sizes = [len(t) for t in world.train.values()]
    assert max(sizes) >= 5 * min(sizes)
