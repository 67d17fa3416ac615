"""A site manifest (``sites/n3.yaml``): where a hospital's images are, how to read them, how its
local split is made, and its network identity. A user edits these to point at real data.

``data.root`` may use ``${VAR}`` or ``${VAR:-default}``; a relative root is taken relative to the
manifest's folder. Paths here are configuration, not patient data, but are still never written
into reports.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from hospitalnet.config import Section, read_yaml, validate
from hospitalnet.errors import ConfigError


class SiteDataSource(Section):
    loader: str = Field(description="registry name: nih | dicom | csv | chestmnist")
    root: str = Field(description="folder holding the site's data; ${VAR:-default} expanded")
    options: dict[str, Any] = Field(default_factory=dict, description="loader-specific options")


class LocalSplit(Section):
    """Used when the source carries no split column: a seeded split by patient."""

    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class NetworkIdentity(Section):
    address: str = Field("127.0.0.1:0", description="host:port this site listens on")
    neighbours: dict[str, str] = Field(
        default_factory=dict, description="neighbour site id -> host:port"
    )
    ca: str | None = None
    certificate: str | None = None
    key: str | None = None


class SiteManifest(Section):
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
    description: str = ""
    data: SiteDataSource
    split: LocalSplit = LocalSplit()
    network: NetworkIdentity = NetworkIdentity()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, *, source: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{source}: environment variable {name} is not set")
            value = default
        return value

    return os.path.expanduser(_VAR.sub(sub, text))


def load_manifest(path: str | Path) -> tuple[SiteManifest, Path]:
    """Load and validate a manifest; return it with its resolved data root."""
    path = Path(path)
    manifest = validate(SiteManifest, read_yaml(path), source=str(path))
    root = Path(expand_vars(manifest.data.root, source=f"{path}: data.root"))
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    return manifest, root
