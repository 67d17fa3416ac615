"""Checkpoints a site can trust after a crash: safetensors for tensors, JSON for everything else.

A checkpoint ``k`` is two files in one folder::

    ckpt-0000000k.safetensors   model, duals, optimiser buffers (flat name -> tensor)
    ckpt-0000000k.json          the record: format, index, toolkit version, model fingerprint,
                                the tensor file's name, size and sha256, the caller's ``meta``
                                (counters, RNG states, ...) and ``record_sha256`` over the rest

Each file is written to a temporary file, fsynced, renamed, then the folder is fsynced; the JSON
record is written last, so a checkpoint exists only once both files are complete. A kill at any
moment leaves the previous checkpoints intact (temporary files are ignored and cleaned up on the
next save). Loading checks both checksums and falls back, with a logged warning, from a truncated,
bit-flipped or empty latest checkpoint to the previous good one. A checkpoint written for another
model fingerprint or another toolkit major.minor version is refused with a
:class:`~hospitalnet.errors.CheckpointError` that says so. Nothing is pickled: ``torch.load`` is
never used, RNG states are stored as base64 of their raw bytes (:func:`encode_rng_state`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hospitalnet import __version__
from hospitalnet.errors import CheckpointError
from hospitalnet.rundir import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.(json|safetensors)$")
_LEFTOVER = re.compile(r"^\.ckpt-\d{8}\.(json|safetensors)\..*\.tmp$")  # rundir temp names


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the JSON record
    index: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    model_fingerprint: str
    toolkit_version: str


class _Damaged(Exception):
    """A checkpoint that cannot be used (the reason is the message)."""


def encode_rng_state(state: torch.Tensor) -> str:
    """``torch.get_rng_state()`` / ``Generator.get_state()`` -> base64 text for the JSON meta."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng_state(text: str) -> torch.Tensor:
    """The inverse of :func:`encode_rng_state` (a uint8 tensor for ``set_state``)."""
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)  # temp file, fsync, rename
    _fsync_dir(path.parent)  # make the rename itself durable


def _indices(directory: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    if directory.is_dir():
        for p in directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def save_checkpoint(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model_fingerprint: str,
    keep: int = 3,
    toolkit_version: str = __version__,
) -> Path:
    """Write checkpoint ``latest + 1`` atomically, keep the newest ``keep``; return its JSON path.

    ``meta`` must be JSON (counters, config digests, RNG states via :func:`encode_rng_state`);
    ``tensors`` are copied to contiguous CPU tensors, so views and shared storage are fine.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for p in directory.iterdir():  # temp files of a write that was killed
        if _LEFTOVER.match(p.name):
            p.unlink(missing_ok=True)
    index = max(_indices(directory), default=0) + 1
    blob = st_save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()})
    tensor_name = f"ckpt-{index:08d}.safetensors"
    record: dict[str, Any] = {
        "format": FORMAT,
        "index": index,
        "toolkit_version": toolkit_version,
        "model_fingerprint": model_fingerprint,
        "tensors_file": tensor_name,
        "tensors_bytes": len(blob),
        "tensors_sha256": _sha256(blob),
        "meta": meta,
    }
    try:
        record["record_sha256"] = _sha256(_canonical(record))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint meta is not plain JSON: {err}") from None
    _write_durably(directory / tensor_name, blob)
    _write_durably(directory / f"ckpt-{index:08d}.json", _canonical(record))
    for old in sorted(_indices(directory)):
        if old <= index - keep:
            # Record first: a half-pruned checkpoint is then invisible rather than damaged.
            (directory / f"ckpt-{old:08d}.json").unlink(missing_ok=True)
            (directory / f"ckpt-{old:08d}.safetensors").unlink(missing_ok=True)
    return directory / f"ckpt-{index:08d}.json"


def _read(directory: Path, index: int) -> Checkpoint:
    path = directory / f"ckpt-{index:08d}.json"
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _Damaged("record missing") from None
    except (ValueError, UnicodeDecodeError):
        raise _Damaged("record is not valid JSON (truncated or corrupted)") from None
    except OSError as err:
        raise _Damaged(f"record unreadable ({err.strerror})") from None
    required = {
        "format": int,
        "index": int,
        "toolkit_version": str,
        "model_fingerprint": str,
        "tensors_file": str,
        "tensors_bytes": int,
        "tensors_sha256": str,
        "meta": dict,
        "record_sha256": str,
    }
    if not isinstance(record, dict) or any(
        not isinstance(record.get(k), t) for k, t in required.items()
    ):
        raise _Damaged("record incomplete")
    claimed = record.pop("record_sha256")
    if _sha256(_canonical(record)) != claimed:
        raise _Damaged("record checksum mismatch")
    if record["format"] != FORMAT or record["index"] != index:
        raise _Damaged(f"unknown format {record['format']} or index mismatch")
    if record["tensors_file"] != f"ckpt-{index:08d}.safetensors":
        raise _Damaged("record names an unexpected tensor file")
    try:
        blob = (directory / record["tensors_file"]).read_bytes()
    except FileNotFoundError:
        raise _Damaged("tensor file missing") from None
    except OSError as err:
        raise _Damaged(f"tensor file unreadable ({err.strerror})") from None
    if len(blob) != record["tensors_bytes"]:
        raise _Damaged(f"tensor file has {len(blob)} bytes, expected {record['tensors_bytes']}")
    if _sha256(blob) != record["tensors_sha256"]:
        raise _Damaged("tensor file checksum mismatch")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as err:
        raise _Damaged(f"tensor file unreadable ({err})") from None
    return Checkpoint(
        path=path,
        index=index,
        tensors=tensors,
        meta=record["meta"],
        model_fingerprint=record["model_fingerprint"],
        toolkit_version=record["toolkit_version"],
    )


def load_latest(
    directory: str | Path,
    expected_fingerprint: str,
    expected_version: str = __version__,
) -> Checkpoint | None:
    """The newest usable checkpoint in ``directory``; ``None`` if it holds no completed one.

    A damaged newer checkpoint is skipped with a warning. Raises :class:`CheckpointError` when
    checkpoints exist but none is readable, or when the newest readable one belongs to another
    model fingerprint or toolkit major.minor version.
    """
    directory = Path(directory)
    found = _indices(directory)
    records = sorted((i for i, kinds in found.items() if "json" in kinds), reverse=True)
    if found and max(found) not in records:
        log.info("%s: checkpoint %d was never completed; ignoring it", directory, max(found))
    if not records:
        return None  # nothing, or only a first checkpoint whose write was interrupted
    problems = []
    for index in records:
        try:
            ckpt = _read(directory, index)
        except _Damaged as why:
            problems.append(f"ckpt-{index:08d}: {why}")
            log.warning(
                "%s: checkpoint %d is unusable (%s); falling back to the previous one",
                directory,
                index,
                why,
            )
            continue
        if ckpt.model_fingerprint != expected_fingerprint:
            raise CheckpointError(
                f"{ckpt.path}: written for model fingerprint {ckpt.model_fingerprint}, "
                f"this run's model is {expected_fingerprint}; refusing to resume from it"
            )
        if _major_minor(ckpt.toolkit_version) != _major_minor(expected_version):
            raise CheckpointError(
                f"{ckpt.path}: written by hospitalnet {ckpt.toolkit_version}, this is "
                f"{expected_version}; refusing to resume across toolkit versions"
            )
        return ckpt
    detail = "; ".join(problems) if problems else "no completed checkpoint"
    raise CheckpointError(f"{directory}: no usable checkpoint ({detail})")
