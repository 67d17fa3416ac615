"""What may leave the run directory in a report: path-like text is redacted before rendering.

The run directory holds no patient identifier by contract, but free text written by people (a site
description, the command line, a data root in the config) can name a folder of patient images, and
such a path often carries a hospital or patient name. Every piece of free text the report shows
goes through :func:`redact_text`; the embedded configuration goes through :func:`redact_config`,
which also blanks every value whose key names a location (``root``, ``cache_dir``, ``path``...).
Patient codes from ``testsets.npz`` are used for resampling only and never rendered.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

REDACTED = "<redacted path>"

# Keys whose value is a location, whatever it looks like (data_root, cache_dir, manifest_path...).
_LOCATION_KEY = re.compile(
    r"(^|_)(root|roots|dir|dirs|directory|path|paths|file|files|folder|cache|manifest|csv)$",
    re.IGNORECASE,
)
_STOP = r"\s'\"=,;()\[\]{}<>"
_PATH = re.compile(
    rf"""(?x)
    (?<![^{_STOP}])                                   # starts a token
    (?:
        (?:[A-Za-z]:[\\/]|~[\\/]?|\.{{1,2}}[\\/]|[\\/]|[A-Za-z][\w+.-]*:/)[^{_STOP}]*  # anchored, URL
      | [^{_STOP}\\/]+(?:[\\/][^{_STOP}\\/]+){{2,}}[\\/]?                  # a/b/c
      | [^{_STOP}\\/]+[\\/][^{_STOP}\\/]+\.[A-Za-z0-9]{{2,5}}(?![^{_STOP}])  # dir/file.ext
    )
    """
)


def looks_like_path(text: str) -> bool:
    return bool(_PATH.search(text))


def redact_text(text: object) -> str:
    """``text`` with every path-like token replaced by ``<redacted path>``."""
    return _PATH.sub(REDACTED, str(text))


def _redact_value(key: str | None, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, str):
        if key is not None and _LOCATION_KEY.search(key) and value.strip():
            return REDACTED
        return redact_text(value)
    return value


def redact_config(text: str) -> str:
    """The config YAML re-dumped with location values and path-like strings redacted.

    Comments are dropped (they are free text too). A file that does not parse is not shown.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return "# config.yaml could not be parsed; not shown\n"
    return yaml.safe_dump(_redact_value(None, data), sort_keys=False, allow_unicode=True)
