"""Injected randomness: one root seed, split deterministically per purpose, site and edge.

Nothing in hospitalnet seeds a global generator. Every component receives a
:class:`numpy.random.Generator` or :class:`torch.Generator` derived from the run's root seed and a
stable name, so adding a site or a component never shifts another component's random stream.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _name_words(name: str) -> list[int]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def seed_sequence(root_seed: int, *names: str) -> np.random.SeedSequence:
    """A SeedSequence for the component named by ``names`` (e.g. ``("site", "n3", "batches")``)."""
    entropy = [int(root_seed)]
    for name in names:
        entropy.extend(_name_words(name))
    return np.random.SeedSequence(entropy)


def numpy_rng(root_seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(root_seed, *names))


def int_seed(root_seed: int, *names: str) -> int:
    """A 63-bit integer seed for libraries that take one (torch.Generator.manual_seed)."""
    return int(
        seed_sequence(root_seed, *names).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
        & np.uint64(0x7FFF_FFFF_FFFF_FFFF)
    )


def torch_generator(root_seed: int, *names: str, device: str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int_seed(root_seed, *names))
    return gen
