import json

import numpy as np
import pytest

from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.nih import NihLoader
from hospitalnet.data.partition import js_divergence, label_distribution, partition_dataset
from hospitalnet.errors import ConfigError
from hospitalnet.labels import LABELS
from hospitalnet.seeding import numpy_rng

from .fake_nih import write_fake_nih

PREV = {
    "Mass": 0.08,
    "Nodule": 0.08,
    "Effusion": 0.12,
    "Cardiomegaly": 0.05,
    "Hernia": 0.03,
    "Emphysema": 0.04,
    "Pneumonia": 0.04,
}


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    rng = numpy_rng(0, "test-partition")
    rows, test = [], set()
    for pid in range(1, 1501):
        for fu in range(int(rng.integers(1, 3))):
            labels = [n for n, p in PREV.items() if rng.random() < p]
            name = f"{pid:08d}_{fu:03d}.png"
            rows.append(
                (name, "|".join(labels) or "No Finding", pid, "AP" if rng.random() < 0.3 else "PA")
            )
            if pid % 5 == 0:
                test.add(name)
    return write_fake_nih(tmp_path_factory.mktemp("pooled"), rows, test=test, size=2)


def _partition(pooled, tmp_path, **kw):
    return partition_dataset(pooled, tmp_path, **kw)


def test_by_patient_disjoint_sizes_and_skew(pooled, tmp_path):
    s = _partition(pooled, tmp_path / "p", seed=1)
    sites = s["sites"]
    assert list(sites) == [f"n{k}" for k in range(1, 9)]
    sizes = np.array([v["images"] for v in sites.values()])
    assert sizes.max() >= 5 * sizes.min()
    shares = sizes / sizes.sum()
    assert np.allclose(shares, [0.25, 0.2, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04], atol=0.03)
    assert sites["n3"]["prevalence"]["Mass"] > 2 * s["pooled"]["prevalence"]["Mass"]
    seen: dict[str, str] = {}
    for site in sites:
        m, root = load_manifest(tmp_path / "p" / "sites" / site / f"{site}.yaml")
        idx = NihLoader(str(root), m.data.options).index()
        train, test = set(idx.patient[idx.split == "train"]), set(idx.patient[idx.split == "test"])
        assert train and test and not train & test
        for p in train | test:
            assert seen.setdefault(p, site) == site, "patient in two sites"


def test_skew_zero_is_near_iid_and_deterministic(pooled, tmp_path):
    iid = _partition(pooled, tmp_path / "a", skew=0.0, seed=1)
    biased = _partition(pooled, tmp_path / "b", skew=1.0, seed=1)
    again = _partition(pooled, tmp_path / "c", skew=1.0, seed=1)
    mean_jsd = lambda s: np.mean([v["jsd"] for v in s["sites"].values()])  # noqa: E731
    assert mean_jsd(biased) > 3 * mean_jsd(iid)
    assert json.dumps(biased["sites"]) == json.dumps(again["sites"])
    with pytest.raises(ConfigError, match="--skew"):
        partition_dataset(pooled, tmp_path / "d", skew=-1)


def test_js_divergence_by_hand():
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert js_divergence(p, q) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert js_divergence(p, p) == pytest.approx(0.0)
    m = np.array([0.5, 0.5])
    kl = lambda a, b: sum(x * np.log2(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
    assert js_divergence(p, m) == pytest.approx(0.5 * kl(p, (p + m) / 2) + 0.5 * kl(m, (p + m) / 2))
    labels = np.zeros((4, len(LABELS)))
    labels[0, 0] = labels[1, 0] = 1
    assert label_distribution(labels)[[0, -1]].tolist() == [0.5, 0.5]
