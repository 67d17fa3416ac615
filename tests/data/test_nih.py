"""The ``nih`` loader on tiny fake copies of the real ChestX-ray14 layout and its bad inputs."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from hospitalnet.data.base import INDEX_COLUMNS, pseudonymise
from hospitalnet.data.nih import NihLoader
from hospitalnet.data.registry import LOADERS
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS

from .fake_nih import pixel_value, write_fake_nih

ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 1, "PA"),
    ("00000001_001.png", "No Finding", 1, "PA"),
    ("00000002_000.png", "Infiltrate", 2, "AP"),  # BBox_List spelling: an alias
    ("00000003_000.png", "Pleural Thickening", 3, "PA"),
    ("00000004_000.png", "Hernia|Mass|Nodule", 4, "AP"),
]
TEST = {"00000002_000.png"}  # patient 2 is the official test patient
CANARY = "CANARY_Doe_John"  # a folder named after a patient, as some exports do


def _labels(idx, row):
    return {n for n in LABELS if idx.iloc[row][n] == 1}


def test_registered_under_its_name():
    assert LOADERS["nih"] is NihLoader


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
@pytest.mark.parametrize("csv_name", ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"])
@pytest.mark.parametrize("header_comma", [True, False], ids=["header-comma", "no-header-comma"])
def test_reads_the_real_layout_variants(tmp_path, nested, csv_name, header_comma):
    root = write_fake_nih(
        tmp_path,
        ROWS,
        nested=nested,
        csv_name=csv_name,
        test=TEST,
        header_trailing_comma=header_comma,
    )

    idx = NihLoader(str(root)).index()

    assert tuple(idx.columns) == INDEX_COLUMNS
    assert all(idx[n].dtype == np.float32 for n in LABELS)
    assert idx["image_id"].tolist() == [r[0] for r in ROWS]
    assert _labels(idx, 0) == {"Cardiomegaly", "Effusion"}
    assert _labels(idx, 1) == set() and not idx.iloc[1][list(LABELS)].isna().any()
    assert _labels(idx, 2) == {"Infiltration"}
    assert _labels(idx, 3) == {"Pleural_Thickening"}
    assert _labels(idx, 4) == {"Hernia", "Mass", "Nodule"}
    assert idx["view"].tolist() == ["PA", "PA", "AP", "PA", "AP"]
    assert idx["split"].tolist() == ["train", "train", "test", "train", "train"]
    assert idx["patient"].tolist() == [pseudonymise(str(r[2])) for r in ROWS]
    assert "1" not in set(idx["patient"])


def test_v2020_file_wins_when_both_are_present_and_csv_option_picks_one(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, csv_name="Data_Entry_2017.csv")
    write_fake_nih(tmp_path, ROWS[:2], csv_name="Data_Entry_2017_v2020.csv", images=False)

    assert len(NihLoader(str(root)).index()) == 2
    assert len(NihLoader(str(root), {"csv": "Data_Entry_2017.csv"}).index()) == len(ROWS)


def test_an_empty_finding_labels_cell_is_unknown_not_negative(tmp_path):
    root = write_fake_nih(tmp_path, [*ROWS[:1], ("00000009_000.png", "", 9, "PA")])

    idx = NihLoader(str(root)).index()

    assert idx.iloc[1][list(LABELS)].isna().all()
    assert _labels(idx, 0) == {"Cardiomegaly", "Effusion"}


def test_split_lists_off_or_absent_leave_split_empty(tmp_path):
    root = write_fake_nih(tmp_path / "a", ROWS, test=TEST)
    assert set(NihLoader(str(root), {"split_lists": False}).index()["split"]) == {""}
    root = write_fake_nih(tmp_path / "b", ROWS, split_lists=False)
    assert set(NihLoader(str(root)).index()["split"]) == {""}


def test_read_image_scales_8_bit_by_255_and_16_bit_by_65535(tmp_path):
    root = write_fake_nih(tmp_path, ROWS[:2])
    loader = NihLoader(str(root))

    img = loader.read_image("00000001_001.png")

    assert img.dtype == np.float32 and img.shape == (8, 8)
    assert np.all(img == np.float32(pixel_value(1) / 255))
    path = next(root.rglob("00000001_000.png"))
    px = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(px).save(path)
    img16 = NihLoader(str(root)).read_image("00000001_000.png")
    assert img16 == pytest.approx(px / 65535.0)


def test_truncated_png_is_an_error_naming_the_image_never_the_path(tmp_path):
    root = write_fake_nih(tmp_path / CANARY, ROWS[:1], size=64)
    path = next(root.rglob("00000001_000.png"))
    path.write_bytes(path.read_bytes()[:60])

    with pytest.raises(DataError) as err:
        NihLoader(str(root)).read_image("00000001_000.png")

    assert "00000001_000.png" in str(err.value)
    assert CANARY not in str(err.value) and "images_001" not in str(err.value)


def test_unknown_image_id_is_a_data_error(tmp_path):
    root = write_fake_nih(tmp_path, ROWS[:1])
    with pytest.raises(DataError, match="no-such.png"):
        NihLoader(str(root)).read_image("no-such.png")


def test_missing_csv_names_the_expected_files_not_the_folder(tmp_path):
    folder = tmp_path / CANARY
    folder.mkdir()

    with pytest.raises(DataError) as err:
        NihLoader(str(folder), source="sites/n9.yaml").index()

    msg = str(err.value)
    assert "Data_Entry_2017.csv" in msg and "Data_Entry_2017_v2020.csv" in msg
    assert msg.startswith("sites/n9.yaml:") and CANARY not in msg


def test_missing_csv_column_is_named(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(DataError, match="Data_Entry_2017.csv: missing column.*'Patient ID'"):
        NihLoader(str(tmp_path)).index()


def test_listed_images_missing_on_disk_are_counted_and_named_or_skipped(tmp_path, caplog):
    root = write_fake_nih(tmp_path / CANARY, ROWS)
    next(root.rglob("00000002_000.png")).unlink()
    next(root.rglob("00000004_000.png")).unlink()

    with pytest.raises(DataError) as err:
        NihLoader(str(root)).index()
    assert "2 listed image(s) missing on disk" in str(err.value)
    assert "first 00000002_000.png" in str(err.value) and CANARY not in str(err.value)

    loader = NihLoader(str(root), {"on_missing_image": "skip"})
    with caplog.at_level(logging.WARNING):
        idx = loader.index()
    assert idx["image_id"].tolist() == ["00000001_000.png", "00000001_001.png", "00000003_000.png"]
    assert loader.skipped_ == {"listed image not found": 2}
    assert CANARY not in caplog.text


def test_unknown_label_names_label_csv_and_row_or_is_dropped_and_counted(tmp_path):
    rows = [*ROWS, ("00000005_000.png", "Covid|Mass", 5, "PA")]
    root = write_fake_nih(tmp_path, rows)

    with pytest.raises(DataError, match=r"Data_Entry_2017.csv row 7: unknown label name 'Covid'"):
        NihLoader(str(root)).index()

    loader = NihLoader(str(root), {"unknown_labels": "drop"})
    idx = loader.index()
    assert _labels(idx, 5) == {"Mass"}
    assert loader.notes_["unknown label names dropped"] == 1


def test_duplicate_image_index_is_an_error(tmp_path):
    root = write_fake_nih(tmp_path, [*ROWS, ROWS[0]])
    with pytest.raises(DataError, match="1 duplicate Image Index value.*first 00000001_000.png"):
        NihLoader(str(root)).index()


def test_the_same_png_flat_and_nested_is_an_error(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, nested=True)
    nested_copy = next(root.rglob("00000003_000.png"))
    (root / "00000003_000.png").write_bytes(nested_copy.read_bytes())

    with pytest.raises(DataError, match="1 image.* more than once.*first 00000003_000.png"):
        NihLoader(str(root)).index()


def test_an_image_in_both_split_lists_is_an_error(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, test=TEST)
    with (root / "test_list.txt").open("a") as f:
        f.write("00000003_000.png\n")

    with pytest.raises(DataError, match="test_list.txt: 1 image.* also in another split list"):
        NihLoader(str(root)).index()


def test_a_patient_in_train_and_test_lists_is_refused_by_count_not_id(tmp_path):
    rows = [*ROWS, ("00000003_001.png", "No Finding", 3, "PA")]
    # Patient 1 and patient 3 each have one image in each list.
    root = write_fake_nih(tmp_path, rows, test={"00000001_001.png", "00000003_001.png"})

    with pytest.raises(DataError) as err:
        NihLoader(str(root)).index()

    msg = str(err.value)
    assert "2 patient(s) appear in both the train and the test split" in msg
    assert pseudonymise("1") not in msg and "00000001" not in msg


def test_image_list_txt_restricts_and_keeps_the_official_split(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, test=TEST)
    (root / "mine.txt").write_text("00000002_000.png\n\n00000004_000.png\n")

    idx = NihLoader(str(root), {"image_list": "mine.txt"}).index()

    assert idx["image_id"].tolist() == ["00000002_000.png", "00000004_000.png"]
    assert idx["split"].tolist() == ["test", "train"]


def test_image_list_csv_split_column_overrides_the_lists(tmp_path, monkeypatch):
    root = write_fake_nih(tmp_path / "nih", ROWS, test=TEST)
    site = tmp_path / "sites" / "n1"
    site.mkdir(parents=True)
    (site / "images.csv").write_text(
        "Image Index,Patient ID,split\n00000002_000.png,2,train\n00000003_000.png,3,test\n"
    )
    monkeypatch.setenv("FAKE_WORLD", str(tmp_path))

    for image_list in ("../sites/n1/images.csv", "${FAKE_WORLD}/sites/n1/images.csv"):
        idx = NihLoader(str(root), {"image_list": image_list}).index()
        assert idx["image_id"].tolist() == ["00000002_000.png", "00000003_000.png"]
        assert idx["split"].tolist() == ["train", "test"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "Image Index\n00000009_000.png\n",
            "mine.csv: 1 listed image.* not in Data_Entry_2017.csv",
        ),
        ("Image Index\n00000001_000.png\n00000001_000.png\n", "mine.csv: 1 image.* listed twice"),
        ("Image Index,split\n00000001_000.png,val\n", "mine.csv row 2: split 'val'"),
        ("name\n00000001_000.png\n", "mine.csv: missing column 'Image Index'"),
    ],
)
def test_bad_image_lists(tmp_path, text, message):
    root = write_fake_nih(tmp_path, ROWS)
    (root / "mine.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        NihLoader(str(root), {"image_list": "mine.csv"}).index()


def test_image_list_not_found_and_bad_options(tmp_path):
    root = write_fake_nih(tmp_path, ROWS)
    with pytest.raises(DataError, match="data.options.image_list: nope.txt not found"):
        NihLoader(str(root), {"image_list": "nope.txt"}).index()
    with pytest.raises(ConfigError, match="on_missing_image"):
        NihLoader(str(root), {"on_missing_image": "ignore"})
    with pytest.raises(ConfigError, match="unknown key"):
        NihLoader(str(root), {"imagelist": "x"})


def test_entries_are_row_aligned_with_the_index(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, test=TEST)
    loader = NihLoader(str(root))

    idx, entries = loader.index(), loader.entries()

    assert entries["Image Index"].tolist() == idx["image_id"].tolist()
    assert entries["split"].tolist() == idx["split"].tolist()
    assert entries["Patient ID"].tolist() == [str(r[2]) for r in ROWS]
    assert "Height]" not in entries.columns and not any(c.startswith("Unnamed") for c in entries)


def test_fingerprint_is_stable_and_tracks_images_lists_csv_and_options(tmp_path):
    root = write_fake_nih(tmp_path, ROWS, test=TEST)
    (root / "mine.txt").write_text("00000001_000.png\n00000003_000.png\n")
    loader = NihLoader(str(root), {"image_list": "mine.txt"})
    first = loader.fingerprint()
    assert loader.fingerprint() == first

    other = next(root.rglob("00000002_000.png"))  # not in this site's list
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(other)
    assert loader.fingerprint() == first

    mine = next(root.rglob("00000003_000.png"))
    st = mine.stat()
    os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = loader.fingerprint()
    assert second != first

    (root / "mine.txt").write_text("00000001_000.png\n")
    third = loader.fingerprint()
    assert third != second
    assert (
        NihLoader(str(root), {"image_list": "mine.txt", "split_lists": False}).fingerprint()
        != third
    )


def test_a_missing_image_arriving_changes_the_fingerprint(tmp_path):
    root = write_fake_nih(tmp_path, ROWS)
    path = next(root.rglob("00000004_000.png"))
    data = path.read_bytes()
    path.unlink()
    loader = NihLoader(str(root), {"on_missing_image": "skip"})
    before = loader.fingerprint()

    path.write_bytes(data)

    assert loader.fingerprint() != before
