"""Command-line interface: ``python -m puma_lightning <command> --config FILE [key=value ...]``."""
