"""What the loaders of image files under a data root (csv, dicom, nih) keep and count alike.

Each indexes a table of images into ``image id -> file``, reads an image through that map, and
counts for the data summary the images it leaves out (``skipped_``, by reason) and things worth
knowing that did not stop the site (``notes_``). Each loader declares its own options, in its
own order (the nih fingerprint digests them unsorted), with the shared ones made here.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from hospitalnet.data.base import SiteLoader
from hospitalnet.data.indexing import BadImageError


def on_bad_option(
    description: str = "bad image: stop with its error, or skip it and count it",
) -> Any:
    """The ``on_bad`` option (default ``error``) that :meth:`ImageFileLoader._bad` applies."""
    return Field("error", description=description)


def unknown_labels_option(
    description: str = "unknown label name: stop, or drop the name and count it",
) -> Any:
    """The ``unknown_labels`` option (default ``error``) that label parsing applies."""
    return Field("error", description=description)


class ImageFileLoader(SiteLoader):
    """Base of the loaders whose ``index()`` maps image ids to files under ``root``."""

    def __init__(
        self, root: str, options: dict[str, Any] | None = None, *, source: str = ""
    ) -> None:
        super().__init__(root, options, source=source)
        self.root_path = Path(root)
        self.skipped_: Counter[str] = Counter()
        self.notes_: Counter[str] = Counter()
        self._paths: dict[str, Any] | None = None  # image id -> file, set by index()

    @property
    def _logger(self) -> logging.Logger:
        # The concrete loader's module logger, so log records keep the names they always had.
        return logging.getLogger(type(self).__module__)

    def _indexed_path(self, image_id: str) -> Any:
        """The file of ``image_id`` (indexing first if needed); BadImageError if not indexed."""
        if self._paths is None:
            self.index()
        assert self._paths is not None
        path = self._paths.get(image_id)
        if path is None:
            raise BadImageError(image_id, "not in this site's index")
        return path

    def _bad(self, err: BadImageError) -> None:
        """Apply ``options.on_bad``: raise ``err``, or count the image as skipped by reason."""
        if self.options.on_bad == "error":  # type: ignore[attr-defined]
            raise err
        self.skipped_[err.reason] += 1
        self._logger.debug("skipped %s", err)

    def _note(self, note: str, where: str) -> None:
        """Count ``note``; warn only on its first occurrence (the summary carries the count)."""
        if not self.notes_[note]:
            self._logger.warning("%s: %s (counted in the data summary)", where, note)
        self.notes_[note] += 1
