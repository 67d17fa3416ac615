"""A damaged image never stops a site that asked to skip bad images, in every loader; what loading
left out, converted or dropped is counted in the run's data summary and the log; `hospitalnet
partition` can pass the loader options its own advice names."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydicom.data import get_testdata_file

from hospitalnet.cli import main
from hospitalnet.config import ExperimentConfig
from hospitalnet.data.dataset import load_site, load_site_tensors
from hospitalnet.data.dicom import DicomLoader, read_dicom
from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.nih import NihLoader
from hospitalnet.deploy.site_process import SiteData, SiteRunOptions, load_site_data
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.world import Split, World
from tests.data.fake_nih import fake_pooled_rows, write_fake_nih
from tests.data.loader_fakes import make_csv_site, make_dicom_site, make_nih_site

BAD_VR = get_testdata_file("badVR.dcm", download=False)  # NumberOfFrames (IS) holds "1A"


# ------------------------------------------------------------------ a malformed DICOM header


def test_malformed_number_in_a_dicom_header_is_a_clear_error_without_the_value():
    with pytest.raises(DataError) as caught:
        read_dicom(BAD_VR)  # ValueError: int("1A") escaped before

    assert str(caught.value) == "badVR.dcm: malformed number in the DICOM header"
    assert "1A" not in str(caught.value)


def _dicom_site_with_bad_vr(root: Path) -> str:
    make_dicom_site(root)
    shutil.copyfile(BAD_VR, root / "study02" / "IM0001.dcm")
    return DicomLoader(str(root), {"on_bad": "skip"}).index()["image_id"][2]


def test_a_malformed_dicom_header_is_skipped_and_counted_under_on_bad_skip(tmp_path):
    bad_id = _dicom_site_with_bad_vr(tmp_path / "site")

    with pytest.raises(DataError, match="malformed number in the DICOM header"):
        load_site_tensors(DicomLoader(str(tmp_path / "site")), 16, None, progress=False)
    tensors = load_site_tensors(
        DicomLoader(str(tmp_path / "site"), {"on_bad": "skip"}), 16, None, progress=False
    )

    assert tensors.skip_reasons == {"malformed number in the DICOM header": 1}
    assert len(tensors) == 4 and bad_id not in tensors.image_ids


def _manifest(path: Path, site: str, loader: str, root: Path, options: dict) -> Path:
    data = {"loader": loader, "root": str(root), "options": options}
    path.write_text(yaml.safe_dump({"site": site, "data": data}))
    return path


def test_site_run_data_loading_skips_a_malformed_dicom_and_reports_it(tmp_path, caplog):
    _dicom_site_with_bad_vr(tmp_path / "site")
    manifest = _manifest(tmp_path / "n3.yaml", "n3", "dicom", tmp_path / "site", {"on_bad": "skip"})
    opts = SiteRunOptions(manifest=manifest, out=tmp_path / "out", global_manifest=None)

    with caplog.at_level(logging.INFO, logger="hospitalnet.data.dataset"):
        data = load_site_data(opts, ExperimentConfig.model_validate({"data": {"image_size": 16}}))

    assert len(data.train) + len(data.local_test) == 4
    assert data.skipped == {"malformed number in the DICOM header": 1}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("site n3:")]
    assert lines == [
        "site n3: 4 image(s) loaded; skipped: 1 malformed number in the DICOM header; "
        "converted or dropped: none"
    ]


# ------------------------------------------------------------------ PNG loaders: on_bad


def _damage_png(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_nih_loader_skips_and_counts_an_unreadable_png(tmp_path):
    # (the csv loader had on_bad already; tests/data/test_bad_input.py covers it)
    _, files = make_nih_site(tmp_path)
    _damage_png(files[1])

    with pytest.raises(DataError, match="truncated or corrupt image data"):
        load_site_tensors(NihLoader(str(tmp_path)), 16, None, progress=False)
    tensors = load_site_tensors(
        NihLoader(str(tmp_path), {"on_bad": "skip"}), 16, None, progress=False
    )

    assert tensors.skip_reasons == {"truncated or corrupt image data": 1}
    assert len(tensors) == 4 and files[1].name not in tensors.image_ids


def test_nih_on_bad_is_a_checked_option(tmp_path):
    make_nih_site(tmp_path)
    with pytest.raises(
        ConfigError, match="data.options: on_bad: Input should be 'error' or 'skip'"
    ):
        NihLoader(str(tmp_path), {"on_bad": "ignore"})


# ------------------------------------------------------------------ counts in data.json


def test_colour_skip_and_label_counts_reach_the_data_summary_and_the_log(tmp_path, caplog):
    root = tmp_path / "csv"
    _, files = make_csv_site(root)
    rgb = np.zeros((24, 20, 3), np.uint8)
    rgb[..., 0] = 200  # truly colour: converted with the luma weights and counted
    from PIL import Image

    Image.fromarray(rgb).save(files[0])
    files[3].unlink()  # listed but missing: skipped and counted
    table = (root / "manifest.csv").read_text().replace("Mass|Nodule", "Mass|Nodule|Tumour")
    (root / "manifest.csv").write_text(table)
    options = {"on_bad": "skip", "unknown_labels": "drop"}
    manifest = _manifest(tmp_path / "n5.yaml", "n5", "csv", root, options)

    with caplog.at_level(logging.INFO, logger="hospitalnet.data.dataset"):
        tensors = load_site(manifest, 16, None, progress=False)

    converted = {"colour images converted to gray": 1, "unknown label names dropped": 1}
    assert tensors.skip_reasons == {"listed image not found": 1}
    assert tensors.notes == converted
    assert (
        "site n5: 4 image(s) loaded; skipped: 1 listed image not found; converted or dropped: "
        "1 unknown label names dropped, 1 colour images converted to gray"
    ) in [r.getMessage() for r in caplog.records]

    # Simulation: the world's data.json carries them per site.
    split = Split.of(tensors, "train")
    part_site = {
        "description": "",
        "patients": 3,
        "train_images": len(split),
        "test_images": 0,
        "prevalence": {},
        "jsd": 0.0,
        "views": {},
    }
    world = World(
        train={"n5": split},
        local_test={"n5": split},
        global_test=split,
        loaders={"n5": "csv"},
        descriptions={"n5": ""},
        partition={
            "sites": {"n5": part_site},
            "pooled": {"images": 1, "prevalence": {}},
            "global_test": {"images": 1, "patients": 1, "prevalence": {}},
        },
        load_counts={"n5": (dict(tensors.skip_reasons), dict(tensors.notes))},
    )
    site = world.data_summary().sites["n5"]
    assert site.skipped == {"listed image not found": 1} and site.converted == converted


def test_site_run_data_summary_carries_the_counts():
    from hospitalnet.deploy.site_outputs import _data

    manifest, _ = load_manifest(Path(__file__).resolve().parents[2] / "sites" / "n3.yaml")
    empty = Split(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, 14), torch.zeros(0))
    one = Split(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, 14), torch.zeros(1))
    data = SiteData(manifest, one, empty, None, {"file not found": 2}, {"x": 1})

    class Run:
        site = "n3"

    run = Run()
    run.data = data  # type: ignore[attr-defined]
    summary = _data(run)  # type: ignore[arg-type]

    assert summary.sites["n3"].skipped == {"file not found": 2}
    assert summary.sites["n3"].converted == {"x": 1}


# ------------------------------------------------------------------ partition passes options


def test_partition_advice_is_true_on_missing_image_skip_reaches_the_manifests(tmp_path, capsys):
    rows, test = fake_pooled_rows(240, seed=3, max_images=3)
    data = write_fake_nih(tmp_path / "nih", rows, test=test, size=2)
    missing = rows[0][0]
    next(data.rglob(missing)).unlink()
    out = tmp_path / "out"

    assert main(["partition", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--on-missing-image skip" in err and not out.exists()

    argv = ["partition", "--data", str(data), "--out", str(out), "--on-missing-image", "skip"]
    assert main([*argv, "--on-bad", "skip", "--unknown-labels", "drop"]) == 0

    expected = {"on_missing_image": "skip", "on_bad": "skip", "unknown_labels": "drop"}
    manifests = sorted(out.glob("sites/*/*.yaml"))
    assert len(manifests) == 9  # eight hospitals and the global test set
    for path in manifests:
        manifest, root = load_manifest(path)
        assert {k: manifest.data.options[k] for k in expected} == expected
        index = NihLoader(str(root), manifest.data.options).index()
        assert missing not in set(index["image_id"])
