"""The rows ``fit`` computes: one file per row family, each registering itself in :mod:`.registry` on import.

Importing this package registers the built-in rows (the imports below); the registry's functions are re-exported
here so that callers need one import.
"""

from puma_lightning.pipeline.stages import classic, polish, prompts, puma, vocab_mapped  # noqa: F401  (they register)
from puma_lightning.pipeline.stages.registry import (BUILTIN, STAGES, TABLE_ORDER, StageEntry, get_stage, migrated_rows,
                                                     register_stage, row_descriptions, single, stage_names)

__all__ = ["BUILTIN", "STAGES", "TABLE_ORDER", "StageEntry", "get_stage", "migrated_rows", "register_stage",
           "row_descriptions", "single", "stage_names"]
