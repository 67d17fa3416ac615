"""The run directory's files as validated values, parsed through the run-directory schema.

The types are :mod:`hospitalnet.rundir_schema` (the writers build the same ones). Every problem a
user can meet here (a missing file, broken JSON, an unknown key, a wrong type or array shape, a
missing prediction key) raises :class:`DataError` with one line naming the file and the key.
Required: ``run.json``, ``testsets.npz`` and ``predictions/<method>.npz`` for every method of the
run. Descriptive files (``config.yaml``, ``data.json``, ``network.json``,
``history/<method>.json``) may be absent (the report then says "not recorded"), but when present
they must be valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.rundir import RunDir, read_arrays, split_key
from hospitalnet.rundir_schema import (
    GLOBAL,
    DataSummary,
    EvalPoint,
    History,
    NetworkRecord,
    RunInfo,
    curve_key,
    final_key,
    label_key,
    local_testset,
    patient_key,
)


@dataclass(frozen=True)
class TestSet:
    """Labels [N, 14] (NaN unknown) and pseudonymous patient codes [N] of one test set."""

    name: str
    labels: np.ndarray
    patients: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_patients(self) -> int:
        return int(np.unique(self.patients).size)


@dataclass
class RunData:
    """What evaluation knows about one run. Predictions are read method by method on demand.

    ``data`` and ``network`` are the JSON of ``data.json`` / ``network.json`` as their schema
    types validated them (every key present, defaults filled in).
    """

    rundir: RunDir
    info: RunInfo
    testsets: dict[str, TestSet]
    config_text: str | None = None
    data: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    histories: dict[str, History | None] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.info.seed

    @property
    def mode(self) -> str:
        return self.info.mode

    @property
    def methods(self) -> list[str]:
        return self.info.methods

    @property
    def sites(self) -> list[str]:
        return self.info.sites

    def testsets_for(self, site: str) -> list[str]:
        """The test sets a site's model is scored on: the shared global one and its own."""
        return [t for t in (GLOBAL, local_testset(site)) if t in self.testsets]

    def eval_points(self, method: str) -> list[EvalPoint]:
        history = self.histories.get(method)
        return list(history.eval_points) if history else []

    def predictions(self, method: str) -> Predictions:
        path = self.rundir.predictions(method)
        return Predictions(path, read_arrays(path), self)


class Predictions:
    """One method's prediction arrays, checked against the test sets when a key is read."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], run: RunData) -> None:
        self.path = path
        self._arrays = arrays
        self._run = run

    def final(self, site: str, testset: str) -> np.ndarray:
        return self._get(final_key(site, testset), testset)

    def curve_points(self, site: str, testset: str) -> list[int]:
        """Eval points k with a stored curve prediction for this site and test set, sorted."""
        ks = []
        for k in self._arrays:
            parts = split_key(k)
            if len(parts) == 4 and parts[0] == "curve" and parts[2:] == [site, testset]:
                try:
                    ks.append(int(parts[1]))
                except ValueError:
                    raise DataError(f"{self.path}: {k}: eval point is not an integer") from None
        return sorted(ks)

    def curve(self, k: int, site: str, testset: str) -> np.ndarray:
        return self._get(curve_key(k, site, testset), testset)

    def _get(self, name: str, testset: str) -> np.ndarray:
        if name not in self._arrays:
            raise DataError(f"{self.path}: missing array {name!r}")
        arr = self._arrays[name]
        if arr.dtype.kind != "f":
            raise DataError(f"{self.path}: {name}: {arr.dtype} values, expected probabilities")
        expected = (self._run.testsets[testset].n_images, NUM_LABELS)
        if arr.shape != expected:
            raise DataError(f"{self.path}: {name}: shape {arr.shape}, expected {expected}")
        if not np.isfinite(arr).all():
            raise DataError(f"{self.path}: {name}: contains NaN or infinite probabilities")
        return arr.astype(np.float64)


def _read_optional(path: Path, record: type[Any]) -> Any:
    return record.read(path) if path.exists() else None


def _read_testsets(path: Path) -> dict[str, TestSet]:
    arrays = read_arrays(path)
    names = sorted({split_key(k)[0] for k in arrays})
    testsets = {}
    for name in names:
        labels_key, patients_key = label_key(name), patient_key(name)
        for k in (labels_key, patients_key):
            if k not in arrays:
                raise DataError(f"{path}: missing array {k!r}")
        labels, patients = arrays[labels_key], arrays[patients_key]
        if labels.dtype.kind != "f":
            raise DataError(f"{path}: {labels_key}: {labels.dtype} values, expected float 0/1/NaN")
        if labels.ndim != 2 or labels.shape[1] != NUM_LABELS:
            raise DataError(f"{path}: {labels_key}: shape {labels.shape}, expected [N, 14]")
        if patients.shape != (labels.shape[0],) or patients.dtype.kind not in "iu":
            raise DataError(f"{path}: {patients_key}: expected {labels.shape[0]} integer codes")
        known = labels[~np.isnan(labels)]
        if not np.isin(known, (0.0, 1.0)).all():
            raise DataError(f"{path}: {labels_key}: values other than 0, 1 and NaN")
        testsets[name] = TestSet(name, labels.astype(np.float64), patients.astype(np.int64))
    if not testsets:
        raise DataError(f"{path}: no test sets")
    return testsets


def load_run(root: str | Path) -> RunData:
    """Read and check a run directory (predictions are read later, method by method)."""
    rundir = RunDir(root)
    if not rundir.root.is_dir():
        raise DataError(f"{rundir.root}: not a run directory (no such folder)")
    info = RunInfo.read(rundir.run_json)
    for method in info.methods:
        if not rundir.predictions(method).exists():
            raise DataError(f"{rundir.predictions(method)}: missing from the run directory")
    testsets = _read_testsets(rundir.testsets)
    if not any(GLOBAL in testsets or local_testset(s) in testsets for s in info.sites):
        raise DataError(f"{rundir.testsets}: neither 'global' nor a local test set of {info.sites}")
    config_text = None
    if rundir.config.exists():
        try:
            config_text = rundir.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{rundir.config}: unreadable ({err.__class__.__name__})") from None
    data = _read_optional(rundir.data_json, DataSummary)
    network = _read_optional(rundir.network_json, NetworkRecord)
    return RunData(
        rundir=rundir,
        info=info,
        testsets=testsets,
        config_text=config_text,
        data=data.model_dump(mode="json") if data is not None else None,
        network=network.model_dump(mode="json") if network is not None else None,
        histories={m: _read_optional(rundir.history(m), History) for m in info.methods},
    )


__all__ = ["GLOBAL", "LABELS", "RunData", "TestSet", "EvalPoint", "load_run", "local_testset"]
