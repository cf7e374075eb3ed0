"""LightningModules: prompt tuning and PUMA migration over a frozen LLM."""

from puma_lightning.tasks.base import NonFiniteLossError, PromptTask
from puma_lightning.tasks.migration import Migration, TeacherRows
from puma_lightning.tasks.prompt_tuning import PromptTuning, embedding_unit, init_prompts

__all__ = ["Migration", "NonFiniteLossError", "PromptTask", "PromptTuning", "TeacherRows", "embedding_unit", "init_prompts"]
