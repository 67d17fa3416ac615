"""What a run directory holds, as types: every writer builds these, the reader parses them.

Test set names: :data:`GLOBAL` (the shared evaluation set every site model is scored on) and
:func:`local_testset` (a site's own held-out patients).
"""

from __future__ import annotations

#: The shared global test set: its test-set name in a run and its manifest's site id.
GLOBAL = "global"


def local_testset(site: str) -> str:
    """The name of ``site``'s own held-out test set."""
    return f"local_{site}"
