"""Seed derivation: every random stream of a run comes from the composition seed and a
stable name, so the same scenario and seed give the same report in any process.

A leaf module (it imports nothing of vpmu_core): the engine, the hypervisor and plugins
(through vpmu_core.api) all derive their sub-seeds here.
"""

from __future__ import annotations

import zlib


def derive_seed(seed: int, *parts: object) -> int:
    """A stable sub-seed of `seed` for the stream named by `parts` (crc32 of their repr:
    independent of PYTHONHASHSEED)."""
    return zlib.crc32(repr((seed, *parts)).encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)
