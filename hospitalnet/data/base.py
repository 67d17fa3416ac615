"""The contract every site loader keeps, whatever the storage format.

A loader is constructed from a site's data source (root folder + loader options), and offers:

- ``index()`` -> :class:`pandas.DataFrame` with exactly :data:`INDEX_COLUMNS`:
  ``image_id`` (unique within the site; a file name or UID, never a folder path),
  ``patient`` (a pseudonym made by :func:`pseudonymise`, never the raw identifier),
  ``view`` ("PA", "AP" or ""), ``split`` ("train", "test" or "" when the source has none),
  then the 14 label columns of :data:`hospitalnet.labels.LABELS` as float32 (NaN = unknown).
- ``read_image(image_id)`` -> float32 array (H, W) with values in [0, 1]; raises
  :class:`DataError` (naming the problem and the image id, not the path) on a bad image.
- ``fingerprint()`` -> a string that changes whenever the source changes (sizes, mtimes, options),
  used to invalidate the decoded-tensor cache.

Loaders are chosen by name through the explicit registry in ``hospitalnet.data.registry``.
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel

from hospitalnet.config import Section, validate
from hospitalnet.labels import LABELS

INDEX_COLUMNS: tuple[str, ...] = ("image_id", "patient", "view", "split", *LABELS)

# Pseudonyms are keyed hashes so that a patient id never leaves the loader in clear text while
# still grouping one patient's images (patient-level splits and bootstrap). The key is per
# network, not secret from the site itself; it only prevents trivial re-identification downstream.
DEFAULT_PSEUDONYM_KEY = b"hospitalnet-pseudonym-v1"


def pseudonymise(patient_id: object, key: bytes = DEFAULT_PSEUDONYM_KEY) -> str:
    digest = hmac.new(key, str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return "p" + digest[:16]


def empty_index() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=str) for c in INDEX_COLUMNS[:4]})
    for label in LABELS:
        df[label] = pd.Series(dtype=np.float32)
    return df


class SiteLoader(ABC):
    """Base class of the format loaders. Subclasses set ``name`` and ``Options``."""

    name: ClassVar[str]

    class Options(Section):
        """Loader-specific options from the manifest's ``data.options`` (none by default)."""

    def __init__(
        self, root: str, options: dict[str, Any] | None = None, *, source: str = ""
    ) -> None:
        self.root = root
        self.source = source or f"{self.name} loader"
        self.options: BaseModel = validate(
            self.Options, options or {}, source=f"{self.source}: data.options"
        )

    @abstractmethod
    def index(self) -> pd.DataFrame: ...

    @abstractmethod
    def read_image(self, image_id: str) -> np.ndarray: ...

    @abstractmethod
    def fingerprint(self) -> str: ...
