"""Datasets, splits, templates and tokenised batching for soft-prompt tasks."""
