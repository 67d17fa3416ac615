"""The site dataset used by training: every image decoded once, resized, and cached as tensors.

``load_site_tensors(loader, image_size, cache_dir)`` walks a loader's index, decodes each image
once (progress bar), resizes it to ``image_size`` x ``image_size`` with antialiasing, stores it as
uint8, and caches the result as safetensors plus a JSON sidecar. The cache key is the loader's
fingerprint and the image size, so any change of the source (a file rewritten, added, removed, an
option changed) builds a new cache. Both files are written to a temporary name, fsynced and
renamed; the JSON is written last and must carry the same key as the tensors, so a half-written
cache is never read.

Resizing squashes the whole film to a square (no crop): findings sit at the edges too
(costophrenic angles, apices). uint8 keeps 256 levels, as the NIH PNGs have.

Bad images: with ``on_bad="skip"`` an image whose ``read_image`` raises :class:`DataError` is left
out and counted by reason (``SiteTensors.skipped``, ``skip_reasons``); it is never zero-filled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from hospitalnet.data.base import SiteLoader
from hospitalnet.data.indexing import BadImageError, check_index, describe_counts
from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.registry import get_loader
from hospitalnet.errors import ConfigError, DataError
from hospitalnet.labels import LABELS, NUM_LABELS
from hospitalnet.seeding import numpy_rng

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: 16-bit PNGs holding 12-bit values are rescaled (data/raster.py)


@dataclass(frozen=True, eq=False)
class SiteTensors:
    """A site's decoded images and their index, row-aligned.

    Attributes
    ----------
    images
        uint8 tensor (N, 1, S, S); divide by 255 for [0, 1].
    labels
        float32 tensor (N, 14) in :data:`LABELS` order; NaN = unknown (masked).
    patients
        int64 tensor (N,): codes into ``patient_keys`` (sorted pseudonyms).
    patient_keys, views, split, image_ids
        numpy arrays of str; ``split`` holds "train", "test" or "".
    skipped, skip_reasons
        images left out under ``on_bad="skip"`` (index-time and decode-time), by reason.
    notes
        things converted but kept, by kind (e.g. colour images converted to gray).
    """

    images: torch.Tensor
    labels: torch.Tensor
    patients: torch.Tensor
    patient_keys: np.ndarray
    views: np.ndarray
    split: np.ndarray
    image_ids: np.ndarray
    image_size: int
    fingerprint: str
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices(self, split: str | None) -> np.ndarray:
        """Row numbers of ``split`` ("train", "test", ""), or all rows for ``None``."""
        if split is None:
            return np.arange(len(self))
        return np.flatnonzero(self.split == split)


class SiteTensorDataset(Dataset):
    """A torch Dataset view of one split: ``(image float32 (1, S, S) in [0, 1], labels (14,))``.

    ``split=None`` gives every row. :meth:`batches` is the fast path (whole-batch indexing).
    """

    def __init__(self, tensors: SiteTensors, split: str | None = "train") -> None:
        self.tensors = tensors
        self.rows = torch.from_numpy(tensors.indices(split))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[i]
        return self.tensors.images[row].float() / 255.0, self.tensors.labels[row]

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of batches; shuffled when a generator is given, else in row order."""
        order = (
            self.rows[torch.randperm(len(self.rows), generator=generator)]
            if generator is not None
            else self.rows
        )
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            rows = order[start : start + batch_size]
            yield self.tensors.images[rows].float().div_(255.0), self.tensors.labels[rows]


# --------------------------------------------------------------------------- decoding


def resize_to_uint8(image: np.ndarray, size: int) -> torch.Tensor:
    """float (H, W) in [0, 1] -> uint8 (1, size, size), antialiased bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return t.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)[0]


def _check_decoded(image: object, image_id: str) -> np.ndarray:
    """Hold every loader (ours or not) to the read_image contract."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.float32:
        raise BadImageError(image_id, "loader returned something other than a 2-D float32 array")
    if min(image.shape) < 1 or not np.isfinite(image).all():
        raise BadImageError(image_id, "empty image or non-finite pixel values")
    if image.min() < 0.0 or image.max() > 1.0:
        raise BadImageError(image_id, "pixel values outside [0, 1]")
    return image


def _resolve_on_bad(loader: SiteLoader, on_bad: str | None) -> str:
    if on_bad is not None:
        return on_bad
    return str(getattr(loader.options, "on_bad", "error"))


def decode_site(
    loader: SiteLoader,
    image_size: int,
    *,
    on_bad: Literal["error", "skip"] | None = None,
    progress: bool = True,
    fingerprint: str | None = None,
) -> SiteTensors:
    """Decode every image of ``loader`` once (no cache). See :func:`load_site_tensors`."""
    policy = _resolve_on_bad(loader, on_bad)
    fingerprint = fingerprint if fingerprint is not None else loader.fingerprint()
    index = loader.index()
    check_index(index, source=loader.source)
    n = len(index)
    images = torch.empty((n, 1, image_size, image_size), dtype=torch.uint8)
    kept: list[int] = []
    reasons: Counter[str] = Counter(getattr(loader, "skipped_", {}))
    ids = index["image_id"].tolist()
    for i, image_id in enumerate(
        tqdm(ids, desc=f"{loader.name}: decoding", unit="img", disable=None if progress else True)
    ):
        try:
            image = _check_decoded(loader.read_image(image_id), image_id)
        except DataError as err:
            if policy != "skip":
                raise
            reasons[err.reason if isinstance(err, BadImageError) else "bad image"] += 1
            logger.debug("skipped %s", err)
            continue
        images[len(kept)] = resize_to_uint8(image, image_size)
        kept.append(i)
    if len(kept) < n:
        images = images[: len(kept)].clone()
    if reasons:
        logger.warning(
            "%s: skipped %d image(s): %s",
            loader.source,
            sum(reasons.values()),
            describe_counts(reasons),
        )
    rows = index.iloc[kept]
    codes, keys = pd.factorize(rows["patient"], sort=True)
    return SiteTensors(
        images=images,
        labels=torch.from_numpy(
            np.ascontiguousarray(rows[list(LABELS)].to_numpy(np.float32)).reshape(-1, NUM_LABELS)
        ),
        patients=torch.from_numpy(np.asarray(codes, dtype=np.int64)),
        patient_keys=np.asarray(keys, dtype=str),
        views=rows["view"].to_numpy(dtype=str),
        split=rows["split"].to_numpy(dtype=str),
        image_ids=rows["image_id"].to_numpy(dtype=str),
        image_size=image_size,
        fingerprint=fingerprint,
        skipped=sum(reasons.values()),
        skip_reasons=dict(reasons),
        notes=dict(getattr(loader, "notes_", {})),
    )


# --------------------------------------------------------------------------- the cache


def cache_key(loader: SiteLoader, fingerprint: str, image_size: int, on_bad: str) -> str:
    text = f"v{CACHE_VERSION}|{loader.name}|{fingerprint}|{image_size}|{on_bad}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_paths(cache_dir: Path, prefix: str, image_size: int, key: str) -> tuple[Path, Path]:
    stem = f"{prefix}-{image_size}px-{key}"
    return cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"


def _atomic_write(path: Path, write: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)  # type: ignore[operator]
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_cache(tensors: SiteTensors, key: str, st_path: Path, json_path: Path) -> None:
    st_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": tensors.images, "labels": tensors.labels, "patients": tensors.patients}
    _atomic_write(st_path, lambda p: save_file(arrays, str(p), metadata={"key": key}))
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "image_size": tensors.image_size,
        "fingerprint": tensors.fingerprint,
        "rows": len(tensors),
        "image_ids": tensors.image_ids.tolist(),
        "views": tensors.views.tolist(),
        "split": tensors.split.tolist(),
        "patient_keys": tensors.patient_keys.tolist(),
        "skipped": tensors.skipped,
        "skip_reasons": tensors.skip_reasons,
        "notes": tensors.notes,
    }
    text = json.dumps(meta)
    _atomic_write(json_path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def _read_cache(key: str, st_path: Path, json_path: Path) -> SiteTensors | None:
    if not (st_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        with safe_open(str(st_path), framework="pt") as fh:
            stored_key = (fh.metadata() or {}).get("key")
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key or stored_key != key:
            return None
        arrays = load_file(str(st_path))
        n = int(meta["rows"])
        if arrays["images"].shape[0] != n or len(meta["image_ids"]) != n:
            raise ValueError("row count mismatch")
        return SiteTensors(
            images=arrays["images"],
            labels=arrays["labels"],
            patients=arrays["patients"],
            patient_keys=np.asarray(meta["patient_keys"], dtype=str),
            views=np.asarray(meta["views"], dtype=str),
            split=np.asarray(meta["split"], dtype=str),
            image_ids=np.asarray(meta["image_ids"], dtype=str),
            image_size=int(meta["image_size"]),
            fingerprint=str(meta["fingerprint"]),
            skipped=int(meta["skipped"]),
            skip_reasons=dict(meta["skip_reasons"]),
            notes=dict(meta["notes"]),
        )
    except Exception as err:  # noqa: BLE001 - any damage means: rebuild
        logger.warning(
            "decoded-image cache %s unreadable (%s); rebuilding", st_path.name, type(err).__name__
        )
        return None


def load_site_tensors(
    loader: SiteLoader,
    image_size: int,
    cache_dir: str | Path | None,
    *,
    on_bad: Literal["error", "skip"] | None = None,
    name: str | None = None,
    progress: bool = True,
) -> SiteTensors:
    """A site's decoded tensors, from the cache when the source is unchanged.

    Parameters
    ----------
    loader
        Any :class:`SiteLoader`.
    image_size
        Side length S of the square model input.
    cache_dir
        Folder for ``{name}-{S}px-{key}.safetensors`` / ``.json``; ``None`` = no cache. Keep it
        outside the data root.
    on_bad
        ``"error"`` or ``"skip"``; ``None`` = the loader's ``on_bad`` option, else ``"error"``.
    name
        Cache file prefix (e.g. the site id); ``None`` = the loader's name.
    progress
        Show a tqdm bar while decoding.
    """
    policy = _resolve_on_bad(loader, on_bad)
    if cache_dir is not None and Path(cache_dir).resolve().is_relative_to(
        Path(loader.root).resolve()
    ):
        # The cache would become part of the source it fingerprints (and be scanned as data).
        raise ConfigError(f"{loader.source}: the cache folder must be outside the data root")
    if cache_dir is None:
        return decode_site(loader, image_size, on_bad=policy, progress=progress)  # type: ignore[arg-type]
    fingerprint = loader.fingerprint()
    key = cache_key(loader, fingerprint, image_size, policy)
    st_path, json_path = _cache_paths(Path(cache_dir), name or loader.name, image_size, key)
    cached = _read_cache(key, st_path, json_path)
    if cached is not None:
        logger.info("%s: %d images from the decoded-image cache", loader.source, len(cached))
        return cached
    tensors = decode_site(
        loader,
        image_size,
        on_bad=policy,
        progress=progress,
        fingerprint=fingerprint,  # type: ignore[arg-type]
    )
    _write_cache(tensors, key, st_path, json_path)
    return tensors


# --------------------------------------------------------------------------- from a manifest


def assign_local_split(
    tensors: SiteTensors, *, test_fraction: float, seed: int, site: str
) -> SiteTensors:
    """Give rows without a split ("") one, by patient, seeded by ``(seed, site)``.

    A patient who already has a train or test row keeps that side for all their rows; the other
    patients are shuffled and ``round(test_fraction * count)`` of them go to test.
    """
    split = tensors.split
    if not (split == "").any():
        return tensors
    patients = tensors.patients.numpy()
    side: dict[int, str] = {int(p): str(s) for p, s in zip(patients, split) if s}
    open_patients = np.unique(patients[(split == "") & ~np.isin(patients, list(side))])
    rng = numpy_rng(seed, "local-split", site)
    shuffled = rng.permutation(open_patients)
    n_test = int(round(test_fraction * len(shuffled)))
    for rank, p in enumerate(shuffled):
        side[int(p)] = "test" if rank < n_test else "train"
    new_split = np.array([side[int(p)] for p in patients], dtype=str)
    return dataclasses.replace(tensors, split=new_split)


def load_site(
    manifest_path: str | Path,
    image_size: int,
    cache_dir: str | Path | None,
    *,
    progress: bool = True,
) -> SiteTensors:
    """Manifest -> registry loader -> cached tensors, with the manifest's local split applied
    to images whose source has no split."""
    manifest, root = load_manifest(manifest_path)
    loader_cls = get_loader(manifest.data.loader, source=str(manifest_path))
    loader = loader_cls(str(root), manifest.data.options, source=str(manifest_path))
    tensors = load_site_tensors(
        loader, image_size, cache_dir, name=manifest.site, progress=progress
    )
    log_load_counts(manifest.site, tensors)
    return assign_local_split(
        tensors,
        test_fraction=manifest.split.test_fraction,
        seed=manifest.split.seed,
        site=manifest.site,
    )


def log_load_counts(site: str, tensors: SiteTensors) -> None:
    """One line per site: images kept, skipped (by reason) and converted or dropped (by kind);
    the same counts go into the run's ``data.json``. INFO when there is something to count
    (stderr stays one line for a command that fails after loading clean data), else DEBUG."""
    skipped = describe_counts(tensors.skip_reasons) or "none"
    notes = describe_counts(tensors.notes) or "none"
    level = logging.INFO if tensors.skip_reasons or tensors.notes else logging.DEBUG
    logger.log(
        level,
        "site %s: %d image(s) loaded; skipped: %s; converted or dropped: %s",
        site,
        len(tensors),
        skipped,
        notes,
    )
