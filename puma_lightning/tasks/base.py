"""Shared LightningModule machinery for every task that feeds soft prompts into a frozen LLM.

Subclasses say where a batch's prompts come from (:meth:`PromptTask.prompts_for`); this class
runs the frozen backbone, the head, the loss, the metrics and the optimiser. The frozen backbone
is never written into checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn

if TYPE_CHECKING:
    import numpy as np

from puma_lightning.models.item_match import mean_item_embedding
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.tasks.metrics import UserAUC, build_metrics, update_metrics


def answer_outputs(backbone: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor],
                   prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The answer logits ``[B, A]`` of a batch with ``prompts`` spliced in, and the hidden state ``[B, d]`` they
    come from when ``head`` reads it (None otherwise: the logits-only path, one projection fewer to keep)."""
    rows = TemplatedRows.of(batch)
    readout = getattr(head, "readout", None)
    if readout is None:
        return backbone.answer_logits(rows, prompts), None
    if readout.neutral:
        return backbone.answer_logits(rows, prompts), neutral_hidden(backbone, readout, batch)
    hidden = backbone.answer_hidden(rows, prompts)
    return backbone.project_answers(hidden), hidden


def scored_rows(backbone: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor],
                prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer logits ``[B, A]`` and the output ``[B]`` of a batch under ``prompts``: the head's reading of them,
    plus the head's item-word match term where it has one (``prompt.item_match``), plus the batch's ``offset`` (a
    residual base's prediction) where it carries one. Every scorer of prompts goes through here."""
    logits, hidden = answer_outputs(backbone, head, batch, prompts)
    output = head(logits, hidden)
    match = getattr(head, "item_match", None)
    if match is not None:
        if "item_ids" not in batch:
            raise ValueError("this head has an item-word match term (prompt.item_match): the batch must carry item_ids")
        output = output + match(prompts, mean_item_embedding(backbone.embed, batch["item_ids"]))
    if "offset" in batch:
        output = output + batch["offset"].to(output.dtype)
    return logits, output


@torch.no_grad()
def neutral_hidden(backbone: nn.Module, readout: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden state ``[B, d]`` of each row read through ``readout``'s neutral prompt (no gradient: the prompt
    and the model are fixed), from its cache where that token sequence was read before. The cache holds the states
    on the device that computed them, so a hit costs no copy; keying a batch costs one host copy of its token ids."""
    from puma_lightning.models.heads import NEUTRAL_CACHE_ROWS

    ids = batch["input_ids"]
    width = ids.shape[1]
    host = torch.cat([ids, batch["answer_pos"].reshape(-1, 1).to(ids.dtype),
                      batch["slot_pos"].reshape(-1, 1).to(ids.dtype)], dim=1).cpu().numpy()  # the one host copy
    keys = [row[: int(row[width]) + 1].tobytes() + row[width + 1 :].tobytes() for row in host]
    cache = readout.neutral_cache
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        if len(cache) + len(missing) > NEUTRAL_CACHE_ROWS:
            cache.clear()
        pick = torch.as_tensor(missing, device=batch["input_ids"].device)
        prompt = readout.neutral_prompt[None].expand(len(missing), -1, -1)
        hidden = backbone.answer_hidden(TemplatedRows.of(batch).select(pick), prompt)
        for i, h in zip(missing, hidden.float().unbind(0)):
            cache[keys[i]] = h
    return torch.stack([cache[key] for key in keys]).to(batch["input_ids"].device)  # no copy unless the device moved


def share_template_prefixes(backbone: nn.Module, datamodule: Any) -> None:
    """Tell the backbone's prefix cache what the datamodule's prefixes are: the constant head every one
    starts with (computed once), and all of them (so each is computed in a fixed group)."""
    encoder = getattr(datamodule, "encoder", None)
    set_stem = getattr(backbone, "set_prefix_stem", None)
    if encoder is not None and callable(set_stem):
        set_stem(encoder.constant_head())
    universe = getattr(datamodule, "prefix_universe", None)
    set_groups = getattr(backbone, "set_prefix_groups", None)
    if callable(universe) and callable(set_groups):
        set_groups(universe())


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf: stops the run with the step and the users involved."""


class PromptTask(L.LightningModule):
    """Frozen LLM + per-user soft prompts (from a subclass) + rating/click head."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        task: str,
        lr: float,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
        train_head: bool = True,
        optimizer: str = "adamw",
        warmup_ratio: float = 0.0,
    ) -> None:
        """``optimizer``: ``adamw`` or ``lazy_adamw`` (see :mod:`puma_lightning.tasks.optim`); ``warmup_ratio``:
        the fraction of the steps over which the learning rate rises linearly before its cosine decay."""
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.task = task
        self.lr = lr
        self.head_lr = lr if head_lr is None else head_lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.warmup_ratio = float(warmup_ratio)
        self.head.requires_grad_(train_head)
        self.val_metrics = build_metrics(task, "val")
        self.test_metrics = build_metrics(task, "test")
        self.val_uauc = UserAUC() if task == "click" else None
        self.test_uauc = UserAUC() if task == "click" else None
        self.strict_loading = False  # checkpoints leave the frozen backbone out
        self._test_rows: list[torch.Tensor] = []
        self._val_rows: list[torch.Tensor] = []
        self.keep_validation_rows = False
        """Keep each validation row's prediction too (:meth:`validation_predictions`; off while training)."""

    # -- what subclasses provide -------------------------------------------------------------
    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        """Soft prompts ``[B, l, d]`` for a batch of user indices."""
        raise NotImplementedError

    def prompt_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters other than the head (prompts or adapter)."""
        raise NotImplementedError

    def per_user_parameters(self) -> list[nn.Parameter]:
        """Parameters with one row per user (updated lazily under ``lazy_adamw``); none by default."""
        return []

    def output_offset(self, users: torch.Tensor) -> torch.Tensor | float:
        """Added to the head's output (a per-user bias where a subclass has one); 0 by default."""
        return 0.0

    # -- forward and steps ---------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer logits ``[B, A]`` and head output ``[B]`` for a batch."""
        prompts = self.prompts_for(batch["user"])
        logits, output = scored_rows(self.backbone, self.head, batch, prompts)
        return logits, output + self.output_offset(batch["user"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, output = self(batch)
        loss = self.training_loss(batch, logits, output)
        if not torch.isfinite(loss):
            users = batch["user"].unique().tolist()[:10]
            raise NonFiniteLossError(
                f"non-finite training loss {loss.item()} at step {self.global_step} (batch {batch_idx}); users {users}"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(output))
        return loss

    def training_loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The loss a training batch is optimised on: the head's task loss (subclasses may add to it)."""
        return self.head.loss(logits, output, batch["label"])

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits, output = self(batch)
        loss = self.head.loss(logits, output, batch["label"])
        prediction = self.head.predict(output)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        update_metrics(metrics, self.task, prediction, batch["label"])
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(output), sync_dist=True)
        self.log_dict(metrics, on_epoch=True, batch_size=len(output))
        if stage == "test" or self.keep_validation_rows:  # kept per row, for paired comparisons on the same rows
            (self._test_rows if stage == "test" else self._val_rows).append(torch.stack(
                [batch["row"].double(), batch["user"].double(), prediction.detach().double(), batch["label"].double()]).cpu())
        uauc = self.val_uauc if stage == "val" else self.test_uauc
        if uauc is not None:
            uauc.update(prediction, batch["label"], batch["user"])
            self.log(f"{stage}/uauc", uauc, on_epoch=True, batch_size=len(output))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Each row's prediction (rating, or click probability) and its answer distribution (softmax over the
        answer tokens for ratings; the click probability for clicks)."""
        logits, output = self(batch)
        prediction = self.head.predict(output)
        distribution = torch.softmax(logits.float(), dim=-1) if logits.shape[-1] > 1 else prediction[:, None]
        return {"row": batch["row"], "prediction": prediction.detach(), "distribution": distribution.detach()}

    # -- the template's constant head, computed once by the prefix cache ----------------------
    def _share_template_head(self) -> None:
        share_template_prefixes(self.backbone, getattr(self.trainer, "datamodule", None))

    def on_fit_start(self) -> None:
        self._share_template_head()

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def test_predictions(self) -> dict[str, np.ndarray]:
        """The last test run's ``row``, ``user``, ``prediction`` and ``label`` per test row, sorted by row
        (every rank's rows under DDP)."""
        return self._gathered(self._test_rows)

    def validation_predictions(self) -> dict[str, np.ndarray]:
        """:meth:`test_predictions` for the last validation run made with :attr:`keep_validation_rows` on."""
        return self._gathered(self._val_rows)

    @staticmethod
    def _gathered(rows: list[torch.Tensor]) -> dict[str, np.ndarray]:
        import numpy as np

        parts = [t.numpy() for t in rows]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank in gathered for p in rank]
        table = np.concatenate(parts, axis=1) if parts else np.zeros((4, 0))
        table = table[:, np.argsort(table[0], kind="stable")]
        return {"row": table[0].astype(np.int64), "user": table[1].astype(np.int64), "prediction": table[2],
                "label": table[3]}

    def on_validation_start(self) -> None:
        self._share_template_head()

    def on_test_start(self) -> None:
        self._share_template_head()

    def on_predict_start(self) -> None:
        self._share_template_head()

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        from puma_lightning.tasks.optim import build_optimizer, warmup_cosine

        per_user = {id(p) for p in self.per_user_parameters()}
        trainable = [p for p in self.prompt_parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in per_user], "lr": self.lr, "weight_decay": self.weight_decay,
                   "lazy": True},
                  {"params": [p for p in trainable if id(p) not in per_user], "lr": self.lr, "weight_decay": self.weight_decay,
                   "lazy": False}]
        head_params = [p for p in self.head.parameters() if p.requires_grad] + self.offset_parameters()
        if head_params:
            groups.append({"params": head_params, "lr": self.head_lr, "weight_decay": 0.0, "lazy": False})
        groups = [g for g in groups if g["params"]]
        optimizer = build_optimizer(self.optimizer_name, groups, on_cuda=self.device.type == "cuda")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(total, round(self.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def offset_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of :meth:`output_offset` (trained at the head's learning rate)."""
        return []

    def trainable_parameter_count(self) -> int:
        """Number of parameters this task trains (prompts or adapter, plus the head if trained)."""
        params = [p for p in self.prompt_parameters() if p.requires_grad] + [p for p in self.head.parameters() if p.requires_grad]
        params += self.offset_parameters()
        return int(sum(p.numel() for p in params))

    # -- checkpoints without the frozen model --------------------------------------------------
    # FrozenLM drops its weights from every state dict and ignores them when loading (its own
    # state-dict hooks), so Lightning checkpoints and these helpers hold only what the task trains.
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's state: prompts or adapter, and the head (never the frozen backbone)."""
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state saved by :meth:`trainable_state_dict` (or a Lightning checkpoint's)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit this task: missing {missing[:5]}, unexpected {unexpected[:5]}")
