"""Liveness changes for states that cache a sum over their active edges (ECL, PDMM).

Such a state keeps ``active`` (neighbour -> edge up) and ``dirty`` (the cached sum must be
recomputed before the next step), so a changed verdict on an edge has to mark the cache stale.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class EdgeSumState(Protocol):
    active: dict[str, bool]
    dirty: bool


StateT = TypeVar("StateT", bound=EdgeSumState)


def set_edge_active_marking_dirty(state: StateT, neighbour: str, active: bool) -> StateT:
    """``Algorithm.set_edge_active`` for such states; a repeated verdict keeps the cache."""
    if state.active.get(neighbour) != active:
        state.active[neighbour] = active
        state.dirty = True
    return state
