"""What a run directory holds, as types: every writer builds these, the reader parses them.

Data flow step: simulation | deployment -> **run directory** -> evaluation. Where the files are
and how they are written atomically is :mod:`hospitalnet.rundir`; what is inside them is here:

==========================  ==========================================================
``run.json``                :class:`RunInfo` (with one :class:`Versions` block)
``data.json``               :class:`DataSummary`
``network.json``            :class:`NetworkRecord` (per method :class:`MethodNetwork`)
``history/<method>.json``   :class:`History`
``node.json``               :class:`NodeStatus` (a site or server process)
``testsets.npz``            :func:`label_key` / :func:`patient_key` per test set
``predictions/<m>.npz``     :func:`final_key` and :func:`curve_key` per site and test set
==========================  ==========================================================

Writers: the simulation (:mod:`hospitalnet.experiment`), the site and server processes and the
multi-process collector (:mod:`hospitalnet.deploy`). Reader: ``evaluation.rundata``. Unknown
keys are refused and every problem is one line naming the file and the dotted key
(:class:`~hospitalnet.errors.DataError`). Keys a writer leaves out take the defaults here; None
values are not written.

Test set names: :data:`GLOBAL` (the shared evaluation set every site model is scored on) and
:func:`local_testset` (a site's own held-out patients).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from hospitalnet import __version__
from hospitalnet.errors import DataError
from hospitalnet.rundir import key, read_json, write_json

#: The shared global test set: its test-set name in a run and its manifest's site id.
GLOBAL = "global"

R = TypeVar("R", bound="Record")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def local_testset(site: str) -> str:
    """The name of ``site``'s own held-out test set."""
    return f"local_{site}"


def label_key(testset: str) -> str:
    """``testsets.npz``: float32 [N, 14] labels (NaN = unknown)."""
    return key(testset, "labels")


def patient_key(testset: str) -> str:
    """``testsets.npz``: int64 [N] pseudonymous patient codes (for the patient bootstrap)."""
    return key(testset, "patients")


def final_key(site: str, testset: str) -> str:
    """``predictions/<method>.npz``: float32 [N, 14] probabilities of the site's final model."""
    return key("final", site, testset)


def curve_key(point: int, site: str, testset: str) -> str:
    """``predictions/<method>.npz``: float16 [N, 14] at evaluation point ``point``."""
    return key("curve", point, site, testset)


class Record(BaseModel):
    """A JSON file of the run directory (or a part of one): unknown keys and wrong types are
    errors; JSON numbers are accepted for floats, nothing is coerced from strings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON; fields that are None are left out (the reader reads them as None)."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def parse(cls: type[R], data: Any, path: Path) -> R:
        """Validate ``data`` read from ``path``; raises one :class:`DataError` line."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise DataError(f"{path}: {_problems(err)}") from None

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        return cls.parse(read_json(path), path)


def _problems(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {msg.removeprefix('Value error, ')}")
    return "; ".join(lines)


def _names(values: list[str], what: str) -> list[str]:
    for v in values:
        if not _NAME.match(v):
            raise ValueError(f"invalid name {v[:40]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated {what} name")
    return values


# ---- run.json ----------------------------------------------------------------------------------


class Versions(Record):
    """The software a run used (one block, written by every writer)."""

    hospitalnet: str
    python: str | None = None
    torch: str | None = None
    numpy: str | None = None
    platform: str | None = None
    torch_threads: int | None = None
    # training.threads auto: seconds spent at each thread count (keys: counts as text)
    torch_thread_seconds: dict[str, float] = {}

    @classmethod
    def current(
        cls, torch_threads: int | None = None, thread_seconds: dict[str, float] | None = None
    ) -> Versions:
        """This process's versions; ``torch_threads`` None = the most threads in
        ``thread_seconds`` (a :meth:`ThreadGovernor.summary`), else this process's now."""
        threads = torch_threads
        if threads is None and thread_seconds:
            threads = max(int(k) for k in thread_seconds)
        if threads is None:
            threads = torch.get_num_threads()
        return cls(
            hospitalnet=__version__,
            python=platform.python_version(),
            torch=torch.__version__,
            numpy=np.__version__,
            platform=f"{platform.system()} {platform.machine()}",
            torch_threads=int(threads),
            torch_thread_seconds=dict(thread_seconds or {}),
        )


class WallSeconds(Record):
    total: float | None = None
    per_method: dict[str, float] = {}


class RunInfo(Record):
    """``run.json``: what ran, where, how long."""

    seed: int
    mode: Literal["simulation", "deployment", "processes", "nvflare"] = "simulation"
    methods: list[str]
    sites: list[str]
    dead_sites: list[str] = []
    started: str | None = None
    command: str | None = None
    device: str | None = None
    wall_seconds: WallSeconds = WallSeconds()
    images_per_second: dict[str, float] = {}
    versions: Versions | None = None
    argv: list[str] | None = None

    @field_validator("methods", "sites")
    @classmethod
    def _valid_names(cls, values: list[str], info: Any) -> list[str]:
        if not values:
            raise ValueError("empty list")
        return _names(values, info.field_name.rstrip("s"))


# ---- history/<method>.json ---------------------------------------------------------------------


class EvalPoint(Record):
    """One point of the learning curve (predictions ``curve__<k>__...``)."""

    k: int
    local_steps: float | None = None  # mean local steps taken per site at this point
    epochs: float | None = None  # passes over the pooled training images at this point
    virtual_time: float | None = None  # simulation: nominal steps; deployment: local steps


class LossPoint(Record):
    site: str
    local_step: int
    loss: float  # mean minibatch loss of the 10 steps from local_step on


class EventRecord(Record):
    """Something that happened (edge inactive/active, isolated, failed, resumed ...)."""

    time: float
    site: str
    kind: str
    peer: str | None = None
    detail: str = ""


class History(Record):
    """``history/<method>.json``."""

    eval_points: list[EvalPoint] = []
    loss: list[LossPoint] = []
    events: list[EventRecord] = []
    images_per_second: float | None = None
    rounds: int | None = None  # the FedAvg server: rounds aggregated


def loss_points(site: str, losses: Sequence[float], every: int = 10) -> list[LossPoint]:
    """A site's minibatch losses as the mean of every ``every`` steps."""
    return [
        LossPoint(site=site, local_step=i, loss=float(np.mean(losses[i : i + every])))
        for i in range(0, len(losses), every)
    ]


def event_records(events: Iterable[Any]) -> list[EventRecord]:
    """:class:`hospitalnet.site.Event` values (time, site, kind, peer, detail) as records."""
    return [
        EventRecord(time=e.time, site=e.site, kind=e.kind, peer=e.peer, detail=e.detail)
        for e in events
    ]


# ---- node.json ---------------------------------------------------------------------------------


#: How a process of a deployment ended.
Status = Literal["finished", "stopped", "failed"]


class NodeStatus(Record):
    """``node.json`` of one process of a deployment: how it ended (site or FedAvg server)."""

    site: str
    method: str
    status: Status
    wall_seconds: float
    detail: str = ""
    resumed_from_checkpoint: int | None = None
    incarnation: int = 0
    # a site
    steps: int | None = None
    serving_ticks: int | None = None
    isolated: bool | None = None
    nonfinite_steps: int | None = None
    active_neighbours: list[str] | None = None
    neighbours: list[str] | None = None
    # the server
    rounds: int | None = None
    target_rounds: int | None = None
    active_sites: list[str] | None = None
    started: str | None = None
    command: str | None = None
    hospitalnet: str | None = None


# ---- network.json ------------------------------------------------------------------------------


class EdgeRecord(Record):
    """One undirected edge ``a - b``: counters per direction (``"a->b"``) and in total."""

    a: str
    b: str
    messages: dict[str, int] = {}
    bytes: dict[str, int] = {}
    dropped: int = 0
    stale: int = 0
    duplicates: int = 0
    rejected: int = 0
    inactive_events: int = 0
    active_at_end: bool = True
    # one process's view (deployment): what it received, why it refused, what failed to send
    received_messages: dict[str, int] | None = None
    received_bytes: dict[str, int] | None = None
    rejected_reasons: dict[str, int] | None = None
    failures: dict[str, int] | None = None


class MethodNetwork(Record):
    edges: list[EdgeRecord] = []
    isolated_sites: list[str] = []
    dead_sites: list[str] = []
    inactive_neighbours: list[str] | None = None  # one site's view
    server: NodeStatus | None = None  # FedAvg / FedProx across processes: the server's node.json


class TopologyRecord(Record):
    kind: str
    nodes: list[str] = []
    edges: list[list[str]] = []

    @field_validator("edges")
    @classmethod
    def _pairs(cls, edges: list[list[str]]) -> list[list[str]]:
        for i, edge in enumerate(edges):
            if len(edge) != 2:
                raise ValueError(f"edges[{i}]: expected a pair of node names")
        return edges


class NetworkRecord(Record):
    """``network.json``: the topology and, per method, every edge's counters."""

    topology: TopologyRecord | None = None
    methods: dict[str, MethodNetwork] = {}


# ---- data.json ---------------------------------------------------------------------------------


class SiteData(Record):
    description: str | None = None
    loader: str | None = None
    patients: int | None = None
    train_images: int | None = None
    test_images: int | None = None
    prevalence: dict[str, float | None] = {}
    jsd: float | None = None
    views: dict[str, int] | None = None
    # What loading did to the site's images: left out (by reason) and converted or dropped but
    # kept (by kind: colour converted to gray, unknown label names dropped, 12-bit PNGs rescaled).
    skipped: dict[str, int] | None = None
    converted: dict[str, int] | None = None


class PooledData(Record):
    train_images: int | None = None
    prevalence: dict[str, float | None] = {}


class GlobalTestData(Record):
    images: int | None = None
    patients: int | None = None
    prevalence: dict[str, float | None] = {}


class DataSummary(Record):
    """``data.json``: the data picture (no image path, no patient identifier)."""

    labels: list[str] = []
    sites: dict[str, SiteData] = {}
    pooled: PooledData | None = None
    global_test: GlobalTestData | None = None


__all__ = [
    "GLOBAL",
    "DataSummary",
    "EdgeRecord",
    "EvalPoint",
    "EventRecord",
    "GlobalTestData",
    "History",
    "LossPoint",
    "MethodNetwork",
    "NetworkRecord",
    "NodeStatus",
    "PooledData",
    "Record",
    "RunInfo",
    "SiteData",
    "Status",
    "TopologyRecord",
    "Versions",
    "WallSeconds",
    "curve_key",
    "event_records",
    "final_key",
    "label_key",
    "local_testset",
    "loss_points",
    "patient_key",
]
