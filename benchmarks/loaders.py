"""Loader throughput: PNG and DICOM ingest at 1024 x 1024, and cached epochs.

Writes ~50 synthetic 1024 px images per format into a temporary folder (with the project's own
exporters, so the files are what the default world writes), then measures

- ingest: decode + resize + uint8 of every image (``decode_site``, no cache), images/second;
- decode only: ``loader.read_image`` alone, images/second;
- cache read: ``load_site_tensors`` from an existing cache, seconds;
- cached epochs: ``SiteTensorDataset.batches`` (shuffled) and a torch DataLoader over
  ``__getitem__``, images/second.

Run from the repository root:  python -m benchmarks.loaders [--images 50] [--size 1024]
Results are printed and saved to benchmarks/results/loaders.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import pydicom
import torch
from torch.utils.data import DataLoader

from hospitalnet.data.base import pseudonymise
from hospitalnet.data.csv_loader import CsvLoader
from hospitalnet.data.dataset import (
    SiteTensorDataset,
    decode_site,
    load_site_tensors,
)
from hospitalnet.data.dicom import DicomLoader
from hospitalnet.data.export import export_site_as_csv, export_site_as_dicom
from hospitalnet.data.indexing import assemble_index
from hospitalnet.labels import LABELS

RESULTS = Path(__file__).resolve().parent / "results" / "loaders.json"


def synthetic_images(n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth chest-like intensity fields with noise (PNG-compressible like real films)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = {}
    for i in range(n):
        cx, cy = rng.uniform(0.4, 0.6, size=2)
        body = np.exp(-(((x - cx) / 0.35) ** 2 + ((y - cy) / 0.45) ** 2))
        lungs = np.exp(-(((np.abs(x - cx) - 0.17) / 0.1) ** 2 + ((y - cy) / 0.25) ** 2))
        image = 0.15 + 0.6 * body - 0.35 * lungs + rng.normal(0, 0.02, (size, size))
        images[f"{i:08d}_000.png"] = np.clip(image, 0, 1).astype(np.float32)
    return images


def timed(fn, repeat: int = 2) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (the machine is shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_format(name, loader, n, image_size, cache_dir) -> dict:
    loader.index()
    ids = list(loader.index()["image_id"])
    decode_s, _ = timed(lambda: [loader.read_image(i) for i in ids], 3)
    ingest_s, _ = timed(lambda: decode_site(loader, image_size, progress=False), 3)
    load_site_tensors(loader, image_size, cache_dir, name=name, progress=False)
    cache_s, _ = timed(
        lambda: load_site_tensors(loader, image_size, cache_dir, name=name, progress=False), 3
    )
    return {
        "images": n,
        "decode_only_images_per_s": round(n / decode_s, 1),
        "ingest_images_per_s": round(n / ingest_s, 1),
        "cache_read_s": round(cache_s, 4),
        "bytes_on_disk_per_image": int(
            sum(p.stat().st_size for p in Path(loader.root).rglob("*") if p.is_file()) / n
        ),
    }


def measure_epochs(tensors, batch_size: int, rows: int, min_seconds: float = 2.0) -> dict:
    # Tile the decoded images to a realistic site size so per-epoch overhead is amortised.
    reps = -(-rows // len(tensors))
    tiled = dataclasses.replace(
        tensors,
        images=tensors.images.repeat(reps, 1, 1, 1)[:rows].contiguous(),
        labels=tensors.labels.repeat(reps, 1)[:rows].contiguous(),
        patients=tensors.patients.repeat(reps)[:rows].contiguous(),
        split=np.resize(tensors.split, rows),
        views=np.resize(tensors.views, rows),
        image_ids=np.resize(tensors.image_ids, rows),
    )
    data = SiteTensorDataset(tiled, None)
    gen = torch.Generator().manual_seed(0)

    def run(make_batches) -> float:
        seen, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for x, _ in make_batches():
                seen += len(x)
        return seen / (time.perf_counter() - start)

    fast = run(lambda: data.batches(batch_size, generator=gen))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0)
    per_item = run(lambda: loader)
    return {
        "batch_size": batch_size,
        "rows": len(data),
        "batches_images_per_s": round(fast, 0),
        "dataloader_getitem_images_per_s": round(per_item, 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="stored image side (pixels)")
    parser.add_argument("--image-size", type=int, default=128, help="model input side (pixels)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epoch-rows", type=int, default=5000, help="rows of the cached epoch")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        # On a shared, oversubscribed machine torch's spinning worker threads can make small
        # tensor ops 10x slower; one thread measures the code, not the contention.
        torch.set_num_threads(args.threads)

    n = args.images
    images = synthetic_images(n, args.size, seed=0)
    ids = list(images)
    labels = np.zeros((n, len(LABELS)), np.float32)
    index = assemble_index(
        ids,
        [pseudonymise(f"B{i}") for i in range(n)],
        ["PA"] * n,
        ["train"] * n,
        labels,
        source="benchmark",
    )
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "pydicom": pydicom.__version__,
            "pillow": PIL.__version__,
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "stored_size": args.size,
        "image_size": args.image_size,
    }
    with tempfile.TemporaryDirectory(prefix="hospitalnet-bench-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        export_site_as_csv(index, images.__getitem__, root / "png", seed=0)
        export_site_as_dicom(index, images.__getitem__, root / "mono2", style="mono2", seed=0)
        export_site_as_dicom(index, images.__getitem__, root / "mono1", style="mono1_voi", seed=0)
        formats = {
            "png_8bit": CsvLoader(str(root / "png")),
            "dicom_mono2_12bit": DicomLoader(str(root / "mono2")),
            "dicom_mono1_voi_12bit": DicomLoader(str(root / "mono1")),
        }
        results["ingest"] = {}
        for name, loader in formats.items():
            results["ingest"][name] = measure_format(name, loader, n, args.image_size, cache)
            print(name, results["ingest"][name], flush=True)
        tensors = load_site_tensors(
            formats["png_8bit"], args.image_size, cache, name="png_8bit", progress=False
        )
        results["cached_epoch"] = measure_epochs(tensors, args.batch_size, args.epoch_rows)
        print("cached_epoch", results["cached_epoch"], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
