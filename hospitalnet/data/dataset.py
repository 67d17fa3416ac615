"""Decode a site's images once, resize them, and cache the tensors.

The cache (safetensors + a JSON sidecar, written atomically) is keyed by the loader's fingerprint
and the image size, so it is rebuilt whenever the site's source files or options change. Training
then never decodes an image again: epochs read uint8 tensors from memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hospitalnet.data.base import SiteLoader
from hospitalnet.data.manifest import load_manifest
from hospitalnet.data.registry import get_loader
from hospitalnet.labels import LABELS
from hospitalnet.rundir import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteTensors:
    site: str
    images: torch.Tensor  # uint8 [N, 1, S, S]
    labels: torch.Tensor  # float32 [N, 14], NaN = unknown
    patients: torch.Tensor  # int64 [N], codes of pseudonyms (for patient-level bootstrap)
    split: np.ndarray  # "train" / "test" / "" per image
    views: np.ndarray

    def subset(self, split: str) -> SiteTensors:
        keep = torch.from_numpy(self.split == split)
        return SiteTensors(
            self.site,
            self.images[keep],
            self.labels[keep],
            self.patients[keep],
            self.split[keep.numpy()],
            self.views[keep.numpy()],
        )

    def __len__(self) -> int:
        return len(self.images)


def _resize(img: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return (t[0].clamp_(0, 1) * 255.0 + 0.5).to(torch.uint8)


def load_site_tensors(
    loader: SiteLoader, site: str, image_size: int, cache_dir: Path | None, *, progress: bool = True
) -> SiteTensors:
    key = f"{site}-{loader.name}-{image_size}-{loader.fingerprint()}"
    if cache_dir is not None:
        tensors_path, meta_path = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
        if tensors_path.is_file() and meta_path.is_file():
            try:
                t = load_file(tensors_path)
                meta = json.loads(meta_path.read_text())
                return SiteTensors(
                    site,
                    t["images"],
                    t["labels"],
                    t["patients"],
                    np.array(meta["split"]),
                    np.array(meta["views"]),
                )
            except (OSError, ValueError, KeyError):
                log.warning("site %s: decoded-image cache unreadable, decoding again", site)
    index = loader.index()
    images = torch.empty((len(index), 1, image_size, image_size), dtype=torch.uint8)
    for i, image_id in enumerate(
        tqdm(
            index["image_id"], desc=f"decode {site}", unit="img", disable=not progress, leave=False
        )
    ):
        images[i] = _resize(loader.read_image(image_id), image_size)
    labels = torch.from_numpy(np.ascontiguousarray(index[list(LABELS)].to_numpy(dtype=np.float32)))
    _, codes = np.unique(index["patient"].to_numpy(), return_inverse=True)
    patients = torch.from_numpy(codes.astype(np.int64))
    out = SiteTensors(
        site,
        images,
        labels,
        patients,
        index["split"].to_numpy(dtype=str),
        index["view"].to_numpy(dtype=str),
    )
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = tensors_path.with_suffix(".tmp")
        save_file({"images": images, "labels": labels, "patients": patients}, str(tmp))
        tmp.replace(tensors_path)
        atomic_write_bytes(
            meta_path,
            json.dumps({"split": out.split.tolist(), "views": out.views.tolist()}).encode(),
        )
    return out


def load_site(
    manifest_path: str | Path, image_size: int, cache_dir: Path | None, *, progress: bool = True
) -> tuple[SiteTensors, str, str]:
    """A site's tensors from its manifest; also returns the loader name and description."""
    manifest, root = load_manifest(manifest_path)
    cls = get_loader(manifest.data.loader, source=str(manifest_path))
    loader = cls(str(root), manifest.data.options, source=str(manifest_path))
    tensors = load_site_tensors(loader, manifest.site, image_size, cache_dir, progress=progress)
    return tensors, manifest.data.loader, manifest.description
