"""The explicit registry of site loaders: manifest ``data.loader`` name -> class."""

from __future__ import annotations

from hospitalnet.data.base import SiteLoader
from hospitalnet.data.chestmnist import ChestMnistLoader
from hospitalnet.data.csv_loader import CsvLoader
from hospitalnet.data.dicom import DicomLoader
from hospitalnet.data.nih import NihLoader
from hospitalnet.errors import ConfigError

LOADERS: dict[str, type[SiteLoader]] = {
    NihLoader.name: NihLoader,
    DicomLoader.name: DicomLoader,
    CsvLoader.name: CsvLoader,
    ChestMnistLoader.name: ChestMnistLoader,
}


def get_loader(name: str, *, source: str) -> type[SiteLoader]:
    try:
        return LOADERS[name]
    except KeyError:
        known = ", ".join(sorted(LOADERS)) or "none"
        raise ConfigError(
            f"{source}: data.loader: unknown loader {name!r} (known: {known})"
        ) from None
