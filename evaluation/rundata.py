"""The run directory's files as validated values.

Every problem a user can meet here (a missing file, broken JSON, a wrong array shape, a missing
prediction key) raises :class:`DataError` with one line naming the file and the key. Required:
``run.json``, ``testsets.npz`` and ``predictions/<method>.npz`` for every method of the run.
Descriptive files (``config.yaml``, ``data.json``, ``network.json``, ``history/<method>.json``)
may be absent (the report then says "not recorded"), but when present they must be readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hospitalnet.errors import DataError
from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.rundir import RunDir, key, read_arrays, read_json, split_key

GLOBAL = "global"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def local_testset(site: str) -> str:
    return f"local_{site}"


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


@dataclass(frozen=True)
class EvalPoint:
    k: int
    local_steps: float | None
    epochs: float | None
    virtual_time: float | None


@dataclass
class RunData:
    """What evaluation knows about one run. Predictions are read method by method on demand."""

    rundir: RunDir
    info: dict[str, Any]
    seed: int
    mode: str
    methods: list[str]
    sites: list[str]
    testsets: dict[str, TestSet]
    config_text: str | None = None
    data: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    histories: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def testsets_for(self, site: str) -> list[str]:
        """The test sets a site's model is scored on: the shared global one and its own."""
        return [t for t in (GLOBAL, local_testset(site)) if t in self.testsets]

    def eval_points(self, method: str) -> list[EvalPoint]:
        history = self.histories.get(method)
        if not history:
            return []
        return [
            EvalPoint(
                k=int(p["k"]),
                local_steps=_float_or_none(p.get("local_steps")),
                epochs=_float_or_none(p.get("epochs")),
                virtual_time=_float_or_none(p.get("virtual_time")),
            )
            for p in history.get("eval_points", [])
        ]

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
        return self._get(key("final", site, testset), testset)

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
        return self._get(key("curve", k, site, testset), testset)

    def _get(self, name: str, testset: str) -> np.ndarray:
        if name not in self._arrays:
            raise DataError(f"{self.path}: missing array {name!r}")
        arr = self._arrays[name]
        expected = (self._run.testsets[testset].n_images, NUM_LABELS)
        if arr.shape != expected:
            raise DataError(f"{self.path}: {name}: shape {arr.shape}, expected {expected}")
        if not np.isfinite(arr).all():
            raise DataError(f"{self.path}: {name}: contains NaN or infinite probabilities")
        return arr.astype(np.float64)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if name not in obj:
        raise DataError(f"{path}: missing key {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DataError(f"{path}: {name}: unexpected value type {type(value).__name__}")
    return value


def _names(values: list[Any], what: str, path: Path) -> list[str]:
    if not values:
        raise DataError(f"{path}: {what}: empty list")
    for v in values:
        if not isinstance(v, str) or not _NAME.match(v):
            raise DataError(f"{path}: {what}: invalid name {str(v)[:40]!r}")
    if len(set(values)) != len(values):
        raise DataError(f"{path}: {what}: repeated name")
    return list(values)


def _read_optional_json(path: Path, kind: type) -> Any:
    if not path.exists():
        return None
    value = read_json(path)
    if not isinstance(value, kind):
        raise DataError(f"{path}: expected a JSON {kind.__name__}")
    return value


def _read_testsets(path: Path) -> dict[str, TestSet]:
    arrays = read_arrays(path)
    names = sorted({split_key(k)[0] for k in arrays})
    testsets = {}
    for name in names:
        labels_key, patients_key = key(name, "labels"), key(name, "patients")
        for k in (labels_key, patients_key):
            if k not in arrays:
                raise DataError(f"{path}: missing array {k!r}")
        labels, patients = arrays[labels_key], arrays[patients_key]
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


def _check_mapping(value: Any, where: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{path}: {where}: expected an object")
    return value


def _check_data(data: dict[str, Any], path: Path) -> None:
    """The shapes the report reads from data.json (numbers are checked where they are shown)."""
    for site, info in _check_mapping(data.get("sites"), "sites", path).items():
        info = _check_mapping(info, f"sites.{site}", path)
        _check_mapping(info.get("prevalence"), f"sites.{site}.prevalence", path)
        _check_mapping(info.get("views"), f"sites.{site}.views", path)
        for field_name in ("train_images", "test_images", "patients", "jsd"):
            value = info.get(field_name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise DataError(f"{path}: sites.{site}.{field_name}: expected a number")
    for part in ("pooled", "global_test"):
        section = _check_mapping(data.get(part), part, path)
        _check_mapping(section.get("prevalence"), f"{part}.prevalence", path)


def _check_network(network: dict[str, Any], path: Path) -> None:
    topology = _check_mapping(network.get("topology"), "topology", path)
    for i, edge in enumerate(topology.get("edges") or []):
        if not isinstance(edge, list | tuple) or len(edge) != 2:
            raise DataError(f"{path}: topology.edges[{i}]: expected a pair of node names")
    for method, stats in _check_mapping(network.get("methods"), "methods", path).items():
        stats = _check_mapping(stats, f"methods.{method}", path)
        edges = stats.get("edges") or []
        if not isinstance(edges, list):
            raise DataError(f"{path}: methods.{method}.edges: expected a list")
        for i, edge in enumerate(edges):
            where = f"methods.{method}.edges[{i}]"
            edge = _check_mapping(edge, where, path)
            if "a" not in edge or "b" not in edge:
                raise DataError(f"{path}: {where}: missing 'a' or 'b'")
            for counter in ("messages", "bytes"):
                values = _check_mapping(edge.get(counter), f"{where}.{counter}", path).values()
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                    raise DataError(f"{path}: {where}.{counter}: expected numbers")


def load_run(root: str | Path) -> RunData:
    """Read and check a run directory (predictions are read later, method by method)."""
    rundir = RunDir(root)
    if not rundir.root.is_dir():
        raise DataError(f"{rundir.root}: not a run directory (no such folder)")
    info = read_json(rundir.run_json)
    if not isinstance(info, dict):
        raise DataError(f"{rundir.run_json}: expected a JSON object")
    seed = _require(info, "seed", int, rundir.run_json)
    methods = _names(_require(info, "methods", list, rundir.run_json), "methods", rundir.run_json)
    sites = _names(_require(info, "sites", list, rundir.run_json), "sites", rundir.run_json)
    mode = str(info.get("mode", "simulation"))
    for method in methods:
        if not rundir.predictions(method).exists():
            raise DataError(f"{rundir.predictions(method)}: missing from the run directory")
    testsets = _read_testsets(rundir.testsets)
    if not any(GLOBAL in testsets or local_testset(s) in testsets for s in sites):
        raise DataError(f"{rundir.testsets}: neither 'global' nor a local test set of {sites}")
    config_text = None
    if rundir.config.exists():
        try:
            config_text = rundir.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{rundir.config}: unreadable ({err.__class__.__name__})") from None
    data = _read_optional_json(rundir.data_json, dict)
    if data is not None:
        _check_data(data, rundir.data_json)
    network = _read_optional_json(rundir.network_json, dict)
    if network is not None:
        _check_network(network, rundir.network_json)
    histories = {}
    for method in methods:
        history = _read_optional_json(rundir.history(method), dict)
        if history is not None:
            for i, point in enumerate(history.get("eval_points", [])):
                if not isinstance(point, dict) or "k" not in point:
                    raise DataError(f"{rundir.history(method)}: eval_points[{i}]: missing 'k'")
        histories[method] = history
    return RunData(
        rundir=rundir,
        info=info,
        seed=seed,
        mode=mode,
        methods=methods,
        sites=sites,
        testsets=testsets,
        config_text=config_text,
        data=data,
        network=network,
        histories=histories,
    )


__all__ = ["GLOBAL", "LABELS", "RunData", "TestSet", "EvalPoint", "load_run", "local_testset"]
