"""Orchestration: the stages of an experiment (source prompts, selection, migration, baselines)."""
