import numpy as np
import pytest
from PIL import Image

from hospitalnet.data.base import INDEX_COLUMNS, pseudonymise
from hospitalnet.data.nih import NihLoader
from hospitalnet.errors import DataError
from hospitalnet.labels import LABEL_INDEX

from .fake_nih import write_fake_nih

ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 1, "PA"),
    ("00000001_001.png", "No Finding", 1, "PA"),
    ("00000002_000.png", "Infiltrate", 2, "AP"),  # BBox-list spelling, an alias
    ("00000003_000.png", "Pleural Thickening", 3, "PA"),
]


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("csv_name", ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"])
def test_reads_real_layout_variants(tmp_path, nested, csv_name):
    root = write_fake_nih(
        tmp_path, ROWS, nested=nested, csv_name=csv_name, test={"00000002_000.png"}
    )
    idx = NihLoader(str(root)).index()
    assert list(idx.columns) == list(INDEX_COLUMNS)
    assert idx["image_id"].tolist() == [r[0] for r in ROWS]
    first = idx.iloc[0]
    assert first["Cardiomegaly"] == 1 and first["Effusion"] == 1 and first["Mass"] == 0
    assert idx.iloc[1][list(LABEL_INDEX)].sum() == 0
    assert idx.iloc[2]["Infiltration"] == 1 and idx.iloc[3]["Pleural_Thickening"] == 1
    assert idx["split"].tolist() == ["train", "train", "test", "train"]
    assert idx["view"].tolist() == ["PA", "PA", "AP", "PA"]
    assert idx.iloc[0]["patient"] == pseudonymise("1") and "1" not in set(idx["patient"])


def test_read_image_scales_8_and_16_bit(tmp_path):
    root = write_fake_nih(tmp_path, ROWS[:2])
    loader = NihLoader(str(root))
    img = loader.read_image("00000001_001.png")
    assert img.dtype == np.float32 and img.shape == (8, 8) and img.max() == pytest.approx(37 / 255)
    path = next(root.rglob("00000001_000.png"))
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)
    assert NihLoader(str(root)).read_image("00000001_000.png").max() == pytest.approx(1.0)


def test_truncated_png_is_an_error_naming_the_image_not_the_path(tmp_path):
    root = write_fake_nih(tmp_path / "CANARY_DIR", ROWS[:1], size=64)
    path = next(root.rglob("00000001_000.png"))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError) as err:
        NihLoader(str(root)).read_image("00000001_000.png")
    assert "00000001_000.png" in str(err.value) and "CANARY_DIR" not in str(err.value)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="no Data_Entry_2017.csv or Data_Entry_2017_v2020.csv"):
        NihLoader(str(tmp_path)).index()


def test_listed_image_missing_on_disk(tmp_path):
    root = write_fake_nih(tmp_path, ROWS)
    next(root.rglob("00000002_000.png")).unlink()
    with pytest.raises(DataError, match="1 listed image.* missing on disk, first 00000002_000.png"):
        NihLoader(str(root)).index()
    assert len(NihLoader(str(root), {"on_missing_image": "skip"}).index()) == 3


def test_unknown_label_and_duplicates(tmp_path):
    root = write_fake_nih(tmp_path / "a", [*ROWS, ("00000004_000.png", "Covid", 4, "PA")])
    with pytest.raises(DataError, match="unknown label name 'Covid'"):
        NihLoader(str(root)).index()
    assert len(NihLoader(str(root), {"unknown_labels": "drop"}).index()) == 5
    root = write_fake_nih(tmp_path / "b", [*ROWS, ROWS[0]])
    with pytest.raises(DataError, match="duplicate Image Index"):
        NihLoader(str(root)).index()


def test_patient_in_train_and_test_is_refused(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, test={"00000001_001.png"})
    with pytest.raises(DataError, match="1 patient.* both the train and the test"):
        NihLoader(str(root)).index()


def test_image_list_restricts_and_fingerprint_tracks_changes(tmp_path):
    root = write_fake_nih(tmp_path, ROWS)
    (root / "mine.csv").write_text(
        "Image Index,split\n00000002_000.png,test\n00000003_000.png,train\n"
    )
    loader = NihLoader(str(root), {"image_list": "mine.csv"})
    idx = loader.index()
    assert idx["image_id"].tolist() == ["00000002_000.png", "00000003_000.png"]
    assert idx["split"].tolist() == ["test", "train"]
    before = loader.fingerprint()
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(next(root.rglob("00000003_000.png")))
    assert NihLoader(str(root), {"image_list": "mine.csv"}).fingerprint() != before
