"""`hospitalnet report` on a run directory whose files were damaged (a full disk, a copy cut
short, a file replaced): one line naming the file, exit code 2, and no report file written."""

from __future__ import annotations

import numpy as np
import pytest
from fakerun import make_fake_run

from hospitalnet.cli import main
from hospitalnet.errors import DataError
from hospitalnet.rundir import RunDir, read_arrays, read_json, write_arrays


def _report(run: RunDir, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["report", str(run.root), "--resamples", "0"])
    return code, capsys.readouterr().err.strip()


def _no_report_written(run: RunDir) -> bool:
    return not any(p.exists() for p in (run.metrics_csv, run.summary_json, run.report_html))


@pytest.fixture
def run(tmp_path) -> RunDir:
    return make_fake_run(tmp_path / "run", methods=["ecl", "pooled"], n_global=60, n_local=12)


@pytest.mark.parametrize("which", ["testsets", "predictions"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbled"])
def test_a_damaged_npz_is_one_line_naming_the_file(run, capsys, which, damage):
    path = run.testsets if which == "testsets" else run.predictions("ecl")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])  # zipfile.BadZipFile before
    elif damage == "empty":
        path.write_bytes(b"")  # EOFError before
    else:  # intact zip directory, damaged compressed member: zlib.error when read
        member = data.index(b"PK\x03\x04") + 60
        path.write_bytes(data[:member] + bytes(200) + data[member + 200 :])

    code, err = _report(run, capsys)

    assert code == 2
    assert err.startswith(f"hospitalnet: error: {path}: ") and "\n" not in err
    assert _no_report_written(run)


def test_a_zero_byte_npz_is_named_empty(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"")

    with pytest.raises(DataError, match=r"x\.npz: empty array file \(0 bytes\)"):
        read_arrays(path)


def test_predictions_that_are_not_numbers_are_refused(run, capsys):
    arrays = read_arrays(run.predictions("ecl"))
    key = next(k for k in arrays if k.startswith("final__"))
    arrays[key] = np.full(arrays[key].shape, "0.5")  # strings: np.isfinite raised TypeError
    write_arrays(run.predictions("ecl"), arrays)

    code, err = _report(run, capsys)

    assert code == 2 and f"{key}: <U3 values, expected probabilities" in err


def test_test_labels_that_are_not_numbers_are_refused(run, capsys):
    arrays = read_arrays(run.testsets)
    arrays["global__labels"] = arrays["global__labels"].astype(str)
    write_arrays(run.testsets, arrays)

    code, err = _report(run, capsys)

    assert code == 2 and "global__labels: <U32 values, expected float 0/1/NaN" in err


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00binary", "folder"])
def test_a_binary_or_unreadable_json_file_is_one_line(run, capsys, damage):
    if damage == "folder":
        run.data_json.unlink()
        run.data_json.mkdir()
        expected = "cannot read (Is a directory)"
    else:
        run.data_json.write_bytes(damage)
        expected = "not a text file (invalid UTF-8); expected JSON"

    code, err = _report(run, capsys)

    assert code == 2 and err == f"hospitalnet: error: {run.data_json}: {expected}"
    with pytest.raises(DataError):
        read_json(run.data_json)
