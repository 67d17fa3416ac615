"""The run directory: what training writes and what ``evaluation`` reads (and nothing else).

Layout (all tensors in ``.npz`` files written and read with ``allow_pickle=False``)::

    RUN_DIR/
      config.yaml               the resolved ExperimentConfig
      run.json                  seed, methods, sites, software versions, device, wall seconds
      data.json                 the data picture: per site images/patients/prevalence/JSD, loaders
      network.json              topology and, per method, messages/bytes/drops per edge
      testsets.npz              "<testset>__labels" float32 [N, 14] (NaN = unknown)
                                "<testset>__patients" int64 [N] (pseudonymous codes, for bootstrap)
      predictions/<method>.npz  "final__<site>__<testset>" float32 [N, 14] probabilities
                                "curve__<k>__<site>__<testset>" float16 [N, 14] at eval point k
      history/<method>.json     {"eval_points": [{"k", "local_steps", "epochs", "virtual_time"}],
                                 "loss": [{"site", "local_step", "loss"}], "events": [...]}

Test set names: ``global`` (pooled distribution, shared for evaluation only) and
``local_<site>`` (a site's own held-out patients). Every method keys its models by site id; a
method with one shared model (pooled, fedavg) writes that model's predictions under every site.
Evaluation writes ``metrics.csv``, ``summary.json``, ``report.html`` and ``report.md`` next to them.
No patient identifier or image path is ever written here.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hospitalnet.errors import DataError

SEP = "__"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the run directory") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (invalid UTF-8); expected JSON") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the run directory") from None
    except EOFError:
        raise DataError(
            f"{path}: empty array file (0 bytes); re-run the step that wrote it"
        ) from None
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        # A truncated or damaged .npz: BadZipFile (no central directory), zlib.error or a CRC
        # failure (BadZipFile) when a member is read, KeyError for a torn member header.
        raise DataError(
            f"{path}: unreadable array file, truncated or damaged ({type(err).__name__})"
        ) from None


def key(*parts: object) -> str:
    return SEP.join(str(p) for p in parts)


def split_key(k: str) -> list[str]:
    return k.split(SEP)


class RunDir:
    """Paths of one run directory (no state beyond the root)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    run_json = property(lambda self: self.root / "run.json")
    data_json = property(lambda self: self.root / "data.json")
    network_json = property(lambda self: self.root / "network.json")
    testsets = property(lambda self: self.root / "testsets.npz")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    summary_json = property(lambda self: self.root / "summary.json")
    report_html = property(lambda self: self.root / "report.html")
    report_md = property(lambda self: self.root / "report.md")

    def predictions(self, method: str) -> Path:
        return self.root / "predictions" / f"{method}.npz"

    def history(self, method: str) -> Path:
        return self.root / "history" / f"{method}.json"

    def methods(self) -> list[str]:
        folder = self.root / "predictions"
        return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []
