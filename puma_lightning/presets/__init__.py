"""Package data: the selection-strategy presets, ``strategies/NAME.yaml`` (one per strategy).

``selection=NAME`` loads ``strategies/NAME.yaml`` from here through ``importlib.resources``
(:func:`puma_lightning.cli.config_loader.strategy_node`), so an installed wheel finds them too.
The repository's top-level ``strategies/`` is a symlink to this folder: browse and edit them there.
"""
