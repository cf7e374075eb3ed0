"""Task heads on the answer-token logits read at the answer position.

* :class:`RatingHead` — logits of "1".."5" feed a 5-class cross-entropy and a small MLP
  (5→32→12→1, ReLU) that regresses the rating; loss = 0.8·MSE + 0.2·CE, as published.
* :class:`ClickHead` — binary cross-entropy on the "Yes" logit, with a learnable scale and bias so
  that the raw logit (often large) can be calibrated.

Either head can also read the answer position's last hidden state (``hidden_size``): a
:class:`HiddenReadout` adds a linear function of it to the output. The 5 answer logits are a narrow
view of what the frozen model computes about an item; its hidden state carries more (on ml100k a
ridge fit on it corrects a user + item bias model, docs/results/prompt_learning_ml100k.md). A
readout with a *neutral prompt* reads the hidden state of the row read through that fixed prompt
instead of the user's own: a per-item term the user's prompt cannot bend
(``prompt.hidden_readout=ridge``). The readout belongs to the model whose hidden states it reads:
:func:`load_head` restarts it at zero on a model of another width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from puma_lightning.models.item_match import ItemWordMatch


NEUTRAL_CACHE_ROWS = 262_144
"""Most token sequences whose neutral hidden state a readout keeps (cleared when full)."""


class HiddenReadout(nn.Module):
    """``w · norm(h) + b`` of the answer position's hidden state ``h`` [B, d]; zero at the start, so a head
    with a fresh readout predicts what it predicted without one.

    ``neutral_prompt`` (buffer ``[l, d]``, empty by default): when set, ``h`` is read with this prompt in
    the slot instead of the user's, so the term depends on the row's text only; those hidden states are
    kept per token sequence (:attr:`neutral_cache`, not saved) since the model and the prompt are fixed."""

    def __init__(self, hidden_size: int, neutral_length: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("neutral_prompt", torch.zeros(neutral_length, hidden_size))
        self.neutral_cache: dict[bytes, torch.Tensor] = {}

    @property
    def hidden_size(self) -> int:
        return int(self.linear.in_features)

    @property
    def neutral(self) -> bool:
        """Whether it reads the rows through its neutral prompt."""
        return self.neutral_prompt.shape[0] > 0

    def set_neutral(self, prompt: torch.Tensor) -> None:
        """Read every row through ``prompt`` ``[l, d]`` from now on (forgets cached hidden states)."""
        self.neutral_prompt = prompt.detach().float().reshape(-1, self.hidden_size).to(self.linear.weight.device).clone()
        self.neutral_cache = {}

    def read_own(self) -> None:
        """Read every row through the user's own prompt from now on (drops the neutral prompt and its cache): the
        weights fitted on neutral states then carry the prompts' gradients (``prompt.hidden_readout=ridge_own``)."""
        self.neutral_prompt = torch.zeros(0, self.hidden_size, device=self.linear.weight.device)
        self.neutral_cache = {}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(hidden.float())).squeeze(-1)


class _ReadsHidden(nn.Module):
    """What both heads share: an optional :class:`HiddenReadout` added to their output, and an optional
    :class:`~puma_lightning.models.item_match.ItemWordMatch` (``item_match``) that the task adds from the prompts."""

    readout: HiddenReadout | None
    item_match: ItemWordMatch | None

    def _with_readout(self, hidden_size: int | None, item_match_width: int | None = None) -> None:
        self.readout = HiddenReadout(hidden_size) if hidden_size else None
        self.item_match = ItemWordMatch(item_match_width) if item_match_width else None

    def attach_item_match(self, hidden_size: int) -> ItemWordMatch:
        """A fresh (zero-scale) item-word match term of width ``hidden_size``, replacing any it had."""
        self.item_match = ItemWordMatch(hidden_size).to(next(self.parameters()).device)
        return self.item_match

    @property
    def reads_hidden(self) -> bool:
        """Whether :meth:`forward` needs the hidden state."""
        return self.readout is not None

    def readout_term(self, hidden: torch.Tensor | None) -> torch.Tensor | float:
        if self.readout is None:
            return 0.0
        if hidden is None:
            raise ValueError("this head reads the hidden state (it has a readout): pass hidden=[B, d]")
        return self.readout(hidden)


class RatingHead(_ReadsHidden):
    """Hybrid regression + classification head for 1..5 ratings."""

    n_answers = 5

    def __init__(self, mse_weight: float = 0.8, ce_weight: float = 0.2, hidden_size: int | None = None,
                 item_match_width: int | None = None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 1))
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight
        self._with_readout(hidden_size, item_match_width)

    def init_bias(self, mean_label: float) -> None:
        """Start the regressor at the training mean so early predictions are sensible."""
        with torch.no_grad():
            self.mlp[-1].bias.fill_(float(mean_label))

    def start_flat(self) -> None:
        """Zero the regressor's last weights: the head then predicts its bias for every row until it trains
        (``prompt.head_start=flat``)."""
        with torch.no_grad():
            self.mlp[-1].weight.zero_()

    def forward(self, answer_logits: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Unclamped rating prediction [B] from the 5 answer logits [B, 5] (+ the readout of ``hidden`` [B, d])."""
        return self.mlp(answer_logits.float()).squeeze(-1) + self.readout_term(hidden)

    def loss(self, answer_logits: torch.Tensor, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """0.8·MSE(prediction, rating) + 0.2·CE(logits, rating class)."""
        target_class = (label.round().long() - 1).clamp(0, 4)
        mse = F.mse_loss(output, label)
        ce = F.cross_entropy(answer_logits.float(), target_class)
        return self.mse_weight * mse + self.ce_weight * ce

    def soft_loss(self, answer_logits: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
                  target_distribution: torch.Tensor) -> torch.Tensor:
        """The same mix against a teacher (distillation): MSE to its predicted rating, cross-entropy to its
        answer distribution ``[B, 5]`` (a soft target instead of the rounded class)."""
        mse = F.mse_loss(output, target)
        ce = F.cross_entropy(answer_logits.float(), target_distribution.float())
        return self.mse_weight * mse + self.ce_weight * ce

    @staticmethod
    def predict(output: torch.Tensor) -> torch.Tensor:
        """Rating prediction clamped to the valid range [1, 5]."""
        return output.clamp(1.0, 5.0)


class ClickHead(_ReadsHidden):
    """Binary click head on the logit of the "Yes" token."""

    n_answers = 1

    def __init__(self, hidden_size: int | None = None, item_match_width: int | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self._with_readout(hidden_size, item_match_width)

    def init_bias(self, mean_label: float) -> None:
        """Nothing to do: the bias is fitted from the first steps (kept for a uniform interface)."""

    def start_flat(self) -> None:
        """Zero the logit's scale: the head then predicts its bias for every row until it trains."""
        with torch.no_grad():
            self.scale.zero_()

    def forward(self, answer_logits: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Click logit [B] from the "Yes" logit [B, 1] (+ the readout of ``hidden`` [B, d])."""
        return answer_logits.float()[:, 0] * self.scale + self.bias + self.readout_term(hidden)

    def loss(self, answer_logits: torch.Tensor, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy with logits."""
        return F.binary_cross_entropy_with_logits(output, label)

    def soft_loss(self, answer_logits: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
                  target_distribution: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy to a teacher's click probability ``target`` (its distribution is that same number)."""
        return F.binary_cross_entropy_with_logits(output, target.float())

    @staticmethod
    def predict(output: torch.Tensor) -> torch.Tensor:
        """Click probability, in float64: in float32 every logit above about 17 rounds to 1.0 and ties."""
        return torch.sigmoid(output.double())


def build_head(task: str, hidden_size: int | None = None, item_match_width: int | None = None) -> nn.Module:
    """The head for a task name (``rating`` or ``click``), with a :class:`HiddenReadout` of width
    ``hidden_size`` and an item-word match term of width ``item_match_width`` when they are given."""
    if task == "rating":
        return RatingHead(hidden_size=hidden_size, item_match_width=item_match_width)
    if task == "click":
        return ClickHead(hidden_size=hidden_size, item_match_width=item_match_width)
    raise ValueError(f"unknown task {task!r}; expected 'rating' or 'click'")


READOUT_PREFIX = "readout."
NEUTRAL_KEY = READOUT_PREFIX + "neutral_prompt"
ITEM_MATCH_PREFIX = "item_match."


def saved_item_match_width(state: dict[str, torch.Tensor]) -> int | None:
    """The width of a saved head's item-word match term (None: it has none)."""
    anchor = state.get(ITEM_MATCH_PREFIX + "anchor")
    return int(anchor.shape[0]) if anchor is not None else None


def readout_width(state: dict[str, torch.Tensor]) -> int | None:
    """The hidden width a saved head's readout reads (None: it has none)."""
    weight = state.get(READOUT_PREFIX + "linear.weight")
    return int(weight.shape[1]) if weight is not None else None


def load_head(task: str, state: dict[str, torch.Tensor], hidden_size: int | None = None) -> nn.Module:
    """The head a saved ``state`` describes (its readout, if it has one, sized from the state).

    ``hidden_size``: the width of the model the head will run on; where the state's readout reads another
    width (a head moved to another model), everything but the readout is loaded and the readout restarts
    at zero on the new width. An item-word match term of another width is dropped (the stage that moves the
    head attaches the new model's own, see ``pipeline.levers.item_match.attach_item_match``)."""
    width = readout_width(state)
    match = saved_item_match_width(state)
    if match is not None and hidden_size is not None and match != hidden_size:
        state = {k: v for k, v in state.items() if not k.startswith(ITEM_MATCH_PREFIX)}
        match = None
    if width is None or hidden_size is None or width == hidden_size:
        head = build_head(task, width, match)
        neutral = state.get(NEUTRAL_KEY)
        if head.readout is not None and neutral is not None and neutral.shape[0] > 0:
            head.readout.set_neutral(neutral)
        head.load_state_dict(state)
        return head
    head = build_head(task, hidden_size, match)
    head.load_state_dict({k: v for k, v in state.items() if not k.startswith(READOUT_PREFIX)}, strict=False)
    return head
