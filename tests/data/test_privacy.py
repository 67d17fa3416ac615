"""Canary patient names/ids in DICOM headers, in a CSV and in folder paths never reach a log
record, an error message, a traceback, a warning, the index, or the decoded-image cache."""

from __future__ import annotations

import logging
import traceback
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from hospitalnet.data.dataset import load_site
from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.registry import LOADERS
from hospitalnet.errors import DataError
from tests.data.loader_fakes import CANARY_ID, CANARY_NAME, ramp, write_dicom, write_png

CANARIES = (CANARY_NAME, CANARY_ID, "CANARY")
# A folder named after the patient, as some PACS exports do.
PATIENT_FOLDER = f"{CANARY_NAME}_{CANARY_ID}"


def _dicom_site(root) -> None:
    rows = []
    for i in range(4):
        rel = f"{PATIENT_FOLDER}/study{i}/IM0001.dcm"
        stored = np.rint(ramp(seed=i) * 4095).astype(np.uint16)
        extra = {}
        if i == 1:
            # Invalid CS characters: pydicom warns on read and may quote the value.
            extra = {"view": f"{CANARY_ID}-x", "ImageType": ["ORIGINAL", f"{CANARY_ID}-x"]}
        with pydicom.config.disable_value_validation():
            write_dicom(
                root / rel,
                stored,
                patient_name=CANARY_NAME,
                patient_id=CANARY_ID,
                OtherPatientIDs=CANARY_ID,
                **extra,
            )
        rows.append({"file": rel, "labels": "No Finding", "split": "train"})
    # A truncated image and a non-DICOM file among them.
    bad = root / rows[2]["file"]
    bad.write_bytes(bad.read_bytes()[:-300])
    (root / rows[3]["file"]).write_bytes(b"PatientName=" + CANARY_NAME.encode() + bytes(200))
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def _csv_site(root) -> None:
    rows = []
    for i in range(3):
        rel = f"{PATIENT_FOLDER}/img_{i}.png"
        write_png(root / rel, np.rint(ramp(seed=i) * 255).astype(np.uint8))
        rows.append({"path": rel, "patient_id": CANARY_ID, "labels": "Mass", "split": "test"})
    (root / rows[1]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n" + CANARY_NAME.encode())
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def _manifest(tmp_path, loader: str, on_bad: str):
    root = tmp_path / f"exports_{CANARY_NAME}"  # the data root's own path holds a canary too
    root.mkdir(exist_ok=True)
    (_dicom_site if loader == "dicom" else _csv_site)(root)
    path = tmp_path / f"{loader}-{on_bad}.yaml"
    manifest = {
        "site": "n9",
        "data": {"loader": loader, "root": str(root), "options": {"on_bad": on_bad}},
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


def _assert_clean(text: str, what: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"canary {canary!r} found in {what}"


@pytest.fixture
def pydicom_debug_logging():
    """The worst case: pydicom's own debug logging on (it logs element values)."""
    pydicom.config.debug(True, default_handler=False)
    yield
    pydicom.config.debug(False, default_handler=False)


@pytest.mark.parametrize("loader", ["dicom", "csv"])
def test_canaries_reach_no_log_error_index_or_cache(
    tmp_path, caplog, capsys, pydicom_debug_logging, loader
):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as err:
            load_site(_manifest(tmp_path, loader, "error"), 16, cache, progress=False)
        tensors = load_site(_manifest(tmp_path, loader, "skip"), 16, cache, progress=False)

    assert tensors.skipped >= 1 and len(tensors) >= 1  # the bad files were met and counted
    manifest, root = load_manifest(tmp_path / f"{loader}-skip.yaml")
    index = LOADERS[loader](str(root), manifest.data.options).index()
    _assert_clean(" ".join(map(str, index.to_numpy().ravel())), "the index")
    _assert_clean(str(err.value), "the error message")
    _assert_clean("".join(traceback.format_exception(err.value)), "the traceback")
    for record in caplog.records:
        _assert_clean(record.getMessage(), f"log record from {record.name}")
    _assert_clean(caplog.text, "formatted log output")
    out = capsys.readouterr()
    _assert_clean(out.out + out.err, "stdout/stderr")
    for w in caught:
        _assert_clean(str(w.message), "a warning")
    for field in ("image_ids", "views", "split", "patient_keys"):
        _assert_clean(" ".join(getattr(tensors, field).tolist()), f"SiteTensors.{field}")
    _assert_clean(str(tensors.skip_reasons) + str(tensors.notes), "skip reasons and notes")
    files = sorted(p for p in cache.iterdir())
    assert files
    for path in files:
        _assert_clean(path.name, "a cache file name")
        data = path.read_bytes()
        for canary in CANARIES:
            assert canary.encode() not in data, f"canary in cache file {path.name}"
