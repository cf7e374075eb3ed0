"""Seeds of a run's parts: each stage (and each seeded draw of the pipeline) gets its own random streams, derived from
the run's seed and a name, so its numbers do not depend on what ran before it."""

from __future__ import annotations

import hashlib


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's random streams, derived from the run's seed and the stage's name."""
    return int(hashlib.sha256(f"{int(seed)}:{stage}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def seed_stage(seed: int, stage: str) -> None:
    """Seed torch, numpy and Python's RNGs for one stage, so its numbers do not depend on what ran before it."""
    import lightning as L

    L.seed_everything(stage_seed(seed, stage), workers=True, verbose=False)
