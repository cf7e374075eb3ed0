"""Migration adapters Φ: source prompt rows [.., d_s] → target prompt rows [.., d_t].

Each module in this folder defines one adapter and registers it; importing this package fills
the registry. To add your own, write a module with ``@register_adapter("name")`` and import it here.
"""

# self-registration; the import order is the order choice lists show (the published adapter first)
from puma_lightning.models.adapters import puma  # noqa: F401  isort: skip
from puma_lightning.models.adapters import compact  # noqa: F401  isort: skip
from puma_lightning.models.adapters.normalized import InputStandardized, with_input_norm
from puma_lightning.models.adapters.shrunk import OutputShrunk
from puma_lightning.models.adapters.registry import (ADAPTERS, adapter_metadata, build_adapter, init_as_linear, linear_path_kinds,
                                                     register_adapter)

__all__ = ["ADAPTERS", "InputStandardized", "adapter_metadata", "build_adapter", "init_as_linear",
           "linear_path_kinds", "OutputShrunk", "register_adapter", "with_input_norm"]
