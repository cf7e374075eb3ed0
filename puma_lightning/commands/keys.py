"""Config keys shared by several commands."""

EXPERIMENT_KEYS = ("run_dir", "seed", "seeds", "plugins", "levers", "data", "source", "target", "prompt", "adapter", "selection", "baselines",
                   "trainer", "cache_dir", "source_dir", "resume", "placebo")
"""The config keys of a whole experiment (what ``fit`` and the topologies read)."""
