import hashlib

import numpy as np
import pandas as pd
import pytest

from hospitalnet.data.synthetic import write_world
from hospitalnet.data.synthetic.phantom import render_batch
from hospitalnet.data.synthetic.population import PREVALENCE, draw_population
from hospitalnet.data.synthetic.writer import DATA_ENTRY_HEADER, world_metadata
from hospitalnet.errors import HospitalnetError
from hospitalnet.labels import LABEL_INDEX, LABELS, NUM_LABELS, parse_finding_labels


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, patients=40, size=64, seed=3, progress=False)
    return out


def test_real_nih_layout(world):
    text = (world / "Data_Entry_2017.csv").read_text()
    assert text.splitlines()[0] == DATA_ENTRY_HEADER
    df = pd.read_csv(world / "Data_Entry_2017.csv")
    # The bracketed headers split into extra columns and the trailing comma adds an empty one.
    assert list(df.columns[:7]) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
    ]
    assert len(df.columns) == 12 and df.iloc[:, -1].isna().all()
    assert df["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(df["View Position"]) <= {"PA", "AP"}
    for value in df["Finding Labels"]:
        parse_finding_labels(value, source="Data_Entry_2017.csv")  # raises on a bad name
    pngs = {p.name for p in world.glob("images_0*/images/*.png")}
    assert pngs == set(df["Image Index"])


def test_split_lists_are_patient_disjoint_and_complete(world):
    df = pd.read_csv(world / "Data_Entry_2017.csv")
    train = set((world / "train_val_list.txt").read_text().split())
    test = set((world / "test_list.txt").read_text().split())
    assert train | test == set(df["Image Index"]) and not train & test
    patient = dict(zip(df["Image Index"], df["Patient ID"]))
    assert not {patient[i] for i in train} & {patient[i] for i in test}


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    write_world(again, patients=40, size=64, seed=3, progress=False)
    for rel in ["Data_Entry_2017.csv", "train_val_list.txt"]:
        assert _digest(world / rel) == _digest(again / rel)
    some = sorted(world.glob("images_0*/images/*.png"))[:5]
    for p in some:
        assert _digest(p) == _digest(again / p.relative_to(world))
    other = tmp_path / "other"
    write_world(other, patients=40, size=64, seed=4, progress=False)
    assert _digest(world / "Data_Entry_2017.csv") != _digest(other / "Data_Entry_2017.csv")


def test_refuses_non_empty_output_and_bad_arguments(world):
    with pytest.raises(HospitalnetError, match="not empty"):
        write_world(world, patients=5, size=64, progress=False)
    with pytest.raises(HospitalnetError, match="--patients"):
        world_metadata(0, seed=0)


def test_prevalences_follow_the_table():
    df = draw_population(6000, np.random.default_rng(0))
    for name, target in PREVALENCE.items():
        # co-occurrence and follow-up persistence move the marginals a little, not a lot
        assert abs(df[name].mean() - target) < 0.35 * target + 0.01, name
    multi = (df[list(LABELS)].sum(axis=1) > 1).mean()
    assert 0.08 < multi < 0.35


@pytest.mark.parametrize(
    ("label", "region"),
    [
        ("Cardiomegaly", (slice(34, 50), slice(36, 58))),  # heart, image right and low
        ("Effusion", (slice(38, 46), slice(8, 56))),  # lung bases
        ("Emphysema", (slice(14, 40), slice(10, 54))),  # lungs (darker)
    ],
)
def test_each_label_leaves_its_own_trace(label, region):
    n = 32
    healthy = np.zeros((n, NUM_LABELS), dtype=bool)
    sick = healthy.copy()
    sick[:, LABEL_INDEX[label]] = True
    views = np.array(["PA"] * n)
    seeds = np.arange(n)
    a = render_batch(healthy, views, seeds, np.random.default_rng(1), 64).astype(float)
    b = render_batch(sick, views, seeds, np.random.default_rng(1), 64).astype(float)
    diff = np.abs(b - a)[:, region[0], region[1]].mean()
    elsewhere = np.abs(b - a)[:, :6, :6].mean()  # a corner outside the body
    assert diff > 3.0 and diff > 5 * elsewhere
