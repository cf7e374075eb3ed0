"""Experiment configuration: OmegaConf structured configs built from dataclasses.

Every field carries a docstring (shown by ``--help``). A YAML file in ``configs/`` is merged onto
these defaults, then bare ``key=value`` command-line tokens are merged as an OmegaConf dotlist.
Unknown keys and wrong types are rejected with one line naming the key. What only one command reads (``bank=``,
``out=``, ...) is not here: it is that command's argument (:mod:`puma_lightning.commands.arguments`).

The defaults of ``prompt``, ``adapter``, ``selection`` and ``baselines`` are the recipe this project chose on
validation (docs/results/demo.md, docs/results/prompt_learning_ml100k.md, docs/results/migration_levers_ml100k.md),
not the published method's settings; ``configs/paper.yaml`` restores those
(``--config configs/paper.yaml``, or ``base: paper.yaml`` in a config). The recipe's task-dependent parts
(``prompt.residual``, ``prompt.hidden_readout``, with ``adapter.readout_rows``) default to ``auto``: the tuned value of
each task (on a click task a logistic residual base, and no readout: ``none``, ``selected``), resolved by the lever
registry when the config loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


TASKS = ("rating", "click")
"""``data.task`` choices: 1..5 stars read from five answer tokens, or a click read from the "Yes" token."""
MODEL_DTYPES = ("auto", "float32", "bfloat16")
"""``source.dtype``/``target.dtype`` choices (``auto``: measured, see :mod:`puma_lightning.models.dtype_choice`)."""
PROMPT_INITS = ("uniform", "scaled")
"""``prompt.init`` choices."""
OUTPUT_SCALES = ("none", "embedding_std")
"""``adapter.output_scale`` choices."""
MISSING_POLICIES = ("error", "drop", "zero_fill")
"""``aggregate.missing`` choices."""
PREPROCESSING_MODES = ("paper", "clean")
"""``data.preprocessing`` choices (see :mod:`puma_lightning.data.prepare`)."""
SPLIT_METHODS = ("chronological", "official", "paper")
"""``data.split_by`` choices (see :mod:`puma_lightning.data.prepared`)."""
DUPLICATE_POLICIES = ("error", "keep_latest")
"""``data.duplicates`` choices (see :mod:`puma_lightning.data.raw.interactions`)."""


@dataclass
class ColumnsConfig:
    user: str = "user"
    """Column of the user id (read as a string)."""
    item: str = "item"
    """Column of the item id, in the interactions file and in the items file (read as a string)."""
    label: str = "label"
    """Column of the label: a rating from 1 to 5 (``data.task=rating``) or 0/1 (``click``; also true/false)."""
    timestamp: Optional[str] = "timestamp"
    """Column of the time (epoch seconds, or an ISO 8601 date); null: the file's row order is the time order."""
    item_text: str = "text"
    """Column of the item's text in the items file (what the template's ``{item}`` shows the model)."""


@dataclass
class DataConfig:
    name: str = "synthetic"
    """Dataset, by its name in ``puma_lightning.data.registry``. Built in: ``synthetic`` (generated, known noise floor), ``movielens-100k`` (real, from the recbole wheel), ``movielens-100k-click`` (the same films as implicit feedback), from raw files in ``raw_dir``: ``amazon-movies``, ``amazon-movies-csv``, ``yelp``, ``mind``, and ``interactions``: your own log and items files (``data.interactions``, ``data.items``; ``docs/your_own_system.md``). Code of your own: ``docs/custom_dataset.md``."""
    task: str = "rating"
    """``rating`` (1..5 stars, hybrid MSE+CE head) or ``click`` (Yes-token BCE head). Synthetic data supports both."""
    module: Optional[str] = None
    """Python module imported before ``name`` is looked up: the module that registers your own dataset (see ``docs/custom_dataset.md``)."""
    template: Any = "movie"
    """Prompt template: a name (see ``puma_lightning.data.templates``), ``auto`` (the dataset's own, its registry entry), or
    an inline mapping ``{text: "... {item} ... {user} ...#Answer:", answers: [...]}``: the text with ``{item}``, optional
    ``{history}`` and exactly one ``{user}`` (where the soft prompt goes), ending with the answer cue; ``answers`` default to
    ``"1".."5"`` (rating) or ``"Yes"`` (click), each one token on both models' tokenizers (``docs/your_own_system.md``)."""
    max_users: Optional[int] = None
    """Keep a seeded subset of this many users (None: all)."""
    max_rows_per_user: Optional[int] = None
    """Keep only each user's latest rows (None: all)."""
    valid_ratio: float = 0.1
    """Fraction of each user's latest history held out for validation (before the test rows)."""
    test_ratio: float = 0.1
    """Fraction of each user's latest history held out for testing."""
    max_item_tokens: int = 48
    """Item text is cut to this many tokens before it is put into the template."""
    n_users: int = 200
    """Synthetic only: number of users."""
    n_items: int = 300
    """Synthetic only: number of items."""
    rows_per_user: int = 40
    """Synthetic only: interactions per user."""
    noise_std: float = 0.5
    """Synthetic only: std of the Gaussian noise added to the latent score (sets the noise floor)."""
    negatives_per_positive: int = 1
    """``movielens-100k-click`` only: films the user never rated drawn (uniformly, seeded) per rated film, as its negatives."""
    interactions: Optional[str] = None
    """``data.name=interactions``: the interaction log, one row per (user, item, label, timestamp): CSV, TSV, Parquet or JSON
    Lines, by its extension (``.gz`` allowed; gzip is detected by its bytes). Columns: ``data.columns``."""
    items: Optional[str] = None
    """``data.name=interactions``: the items file (item id and text, ``data.columns.item``/``item_text``), same formats."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """``data.name=interactions``: which column holds what."""
    duplicates: str = "error"
    """``data.name=interactions``: a (user, item) pair on several rows: ``error`` (stop, naming both lines) or ``keep_latest``
    (keep its latest row by timestamp, then file order, and count the others)."""
    raw_dir: Optional[str] = None
    """Raw-file datasets (``amazon-movies``, ``amazon-movies-csv``, ``yelp``, ``mind``): folder with the downloaded files."""
    processed_dir: Optional[str] = None
    """Where ``prepare`` writes the processed dataset (None: ``$PUMA_CACHE`` or ``~/.cache/puma_lightning``, then ``data/<name>-<hash of the preprocessing parameters>``)."""
    min_item_ratings: int = 0
    """Raw-file datasets: drop items with fewer interactions than this (Amazon paper setting: 10)."""
    min_user_ratings: int = 0
    """Raw-file datasets: then drop users with fewer interactions than this (Amazon 20, Yelp 25)."""
    kcore: bool = False
    """Raw-file datasets: repeat the item and user filters until both hold (iterative k-core) instead of one pass each."""
    preprocessing: str = "clean"
    """Raw-file datasets: ``paper`` keeps what the authors' published scripts keep, quirks included (Amazon: every numeric rating and duplicate review, the last meta line of a repeated id; Yelp: businesses with a non-blank name, ``review_count > 0`` and non-blank categories; MIND: the published chain of filters, caps and seeded samples, see ``puma_lightning.data.raw.mind.PaperChain``), so the counts are the published ones; ``clean`` drops exact duplicates and invalid values and counts them. The manifest records the mode and the counts after every step. The shipped Amazon, Yelp and MIND configs use ``paper``."""
    max_bad_fraction: float = 0.01
    """Raw-file datasets: malformed lines are skipped and counted; a file stops ``prepare`` with an error only when its malformed lines are more than this fraction of its lines *and* more than ``bad_lines_allowed``."""
    bad_lines_allowed: int = 10
    """Raw-file datasets: the absolute minimum of the bad-line limit: this many malformed lines per file are always tolerated, whatever ``max_bad_fraction`` says, so a small file is not aborted over one bad line (the limit is ``max(max_bad_fraction * lines, bad_lines_allowed)``)."""
    history_titles: int = 5
    """MIND: at most this many history titles (sampled with the run's seed) fill the template's ``{history}``."""
    rated_history: int = 0
    """Rating datasets: fill the template's ``{history}`` with the user's latest this-many earlier *training* ratings (``"title: rating; ..."``, see ``puma_lightning.data.history``); 0: no history. Use with a template that has ``{history}`` (``item_first_history``). Every row's text then differs, so its prefix is computed per row (slower)."""
    split_by: str = "chronological"
    """``chronological`` (per user, by time, ``valid_ratio``/``test_ratio``; a ratio of 0 gives an empty split), ``official`` (the raw files' own split: Amazon benchmark CSVs; MIND train -> train/valid, dev -> test) or ``paper`` (the published split: per user chronological 80/20 train/valid with the published rounding, no test rows; MIND: train -> train, dev -> valid). With no test rows, stages that test need ``split=valid``."""


@dataclass
class ModelConfig:
    name: str = "tiny-llama"
    """Packaged name (``smollm2-135m``, ``gemma3-270m``), tiny test model (``tiny-llama``, ``tiny-gemma3``, ``tiny-qwen2``), local folder or hub id."""
    dtype: str = "auto"
    """``float32``, ``bfloat16`` or ``auto`` (bf16 for real models, fp32 for tiny ones)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the checkpoint folder. Off unless you trust the source."""
    bank: Optional[str] = None
    """``source`` only: a prompt bank you already have for this model (made by ``bank import`` or by our ``pretrain``): ``fit``,
    ``migrate``, ``chain``, ``cold-start`` and ``select`` use its prompts instead of training source prompts (a bank without a
    head gets one fitted on the frozen prompts, recorded as its own cost)."""
    prefix_cache_mb: Optional[float] = 4096.0
    """Shared-prefix key/value cache budget in MiB: template tokens before the user slot are computed once per distinct prefix (per item with the ``item_first`` template) and reused, never backpropagated. An fp32 item prefix of ~45 tokens takes ~2 MiB on SmolLM2 (1.7 on Gemma-3-270M), half in bf16: size it to hold every item, or entries are evicted and recomputed each epoch. None: plain path."""
    compile: bool = False
    """``torch.compile`` each decoder layer (dynamic shapes). Off by default: on a 2-core CPU it gave 1.07x warm samples/s after ~290 s of compilation (``benchmarks/throughput.py --compile``), so it pays only on long runs; measure it on your GPU."""


PROMPT_OPTIMIZERS = ("adamw", "lazy_adamw")
"""``prompt.optimizer`` choices (built by :func:`puma_lightning.tasks.optim.build_optimizer`)."""
PROMPT_STARTS = ("random", "item_text")
"""``prompt.init_from`` choices (see :func:`puma_lightning.pipeline.builders.initial_prompts`)."""
HEAD_STARTS = ("random", "flat")
"""``prompt.head_start`` choices (see :meth:`puma_lightning.models.heads.RatingHead.start_flat`)."""
ADAPTER_VALIDATION = ("selected", "heldout", "heldout_all")
"""``adapter.validation`` choices."""


@dataclass
class PromptConfig:
    length: int = 1
    """Soft-prompt rows per user (``l``)."""
    init: str = "scaled"
    """``uniform`` (U(-0.1, 0.1) in embedding units, as published) or ``scaled`` (default: the same, parametrised in units of the model's embedding std, so init and ``lr`` mean the same on every model, e.g. SmolLM2 and Gemma-3; docs/results/demo.md)."""
    lr: float = 0.02
    """Learning rate of the prompts (AdamW); default 0.02 in ``scaled`` units (published: 8e-4, 5e-4 on Amazon, in embedding units; docs/results/prompt_learning_ml100k.md)."""
    head_lr: Optional[float] = 0.003
    """Learning rate of the rating/click head; default 0.003 (None: same as ``lr``, as published; docs/results/prompt_learning_ml100k.md)."""
    epochs: int = 15
    """Training epochs; the best epoch by ``val/loss`` is kept."""
    batch_size: int = 32
    """Training batch size."""
    weight_decay: float = 0.0
    """AdamW weight decay on the prompts."""
    optimizer: str = "adamw"
    """``adamw`` (every prompt moves every step through its momentum and decay) or ``lazy_adamw`` (a user's prompt, its moments and its decay advance only on steps where the user is in the batch)."""
    warmup_ratio: float = 0.0
    """Fraction of the training steps over which the learning rate rises linearly from 0 before the cosine decay."""
    early_stopping_patience: Optional[int] = None
    """Stop when ``val/loss`` has not improved for this many epochs (None: train all ``epochs``); the best epoch is kept either way."""
    init_from: str = "random"
    """``random`` (U(-0.1, 0.1), see ``init``) or ``item_text``: every prompt row starts at the mean input embedding of the text of the user's training items, plus the random draw (a start that already says what the user watched)."""
    user_bias: bool = False
    """Add a trainable per-user scalar to the head's output (trained at ``head_lr``), so that a user's average rating needs no prompt; rows trained with it say so (``user_bias`` in results.json). The bias stays with the run's stage; banks hold the prompts only."""
    hidden_readout: str = "auto"
    """``auto`` (default): ``ridge`` on a rating task, chosen on validation (docs/results/prompt_learning_ml100k.md), and
    ``none`` on a click task (resolved when the config loads). ``none``: the head reads the answer tokens' logits only (as published). ``trained``: it also reads the last hidden state
    at the answer position through a linear readout (zero at the start) trained with the head. ``ridge``: that readout is
    fitted in closed form before the stage trains (on its training rows, read through one neutral prompt; penalty and
    components chosen on its validation rows; see :mod:`puma_lightning.pipeline.readout_fit`) and then frozen. ``ridge_own``: the
    same fit, frozen, but then read through each user's *own* prompt (the hidden state the prompt steers), so the prompts'
    gradients reach them through a d-dimensional channel the fit aligned with the ratings, not only through the 5 answer
    logits (docs/prompt_diagnosis.md). The readout
    belongs to the model it reads: where a head moves to another model (PUMA's adapter, ``vocab_map``) it restarts at zero
    on that model's width, and is refitted there under ``ridge`` where that stage trains (PUMA's adapter), from its rows."""
    head_start: str = "random"
    """``random`` (the rating head's MLP as PyTorch initialises it, as published) or ``flat``: its last layer's weights start
    at zero, so a fresh head predicts exactly its start (the residual base where there is one) for every row, and training
    need not first undo the random MLP's item-dependent output (docs/prompt_diagnosis.md, section 5)."""
    item_match: float = 0.0
    """Scale ``s`` of the item-word match term (0: none, as published). Each row's output gains ``s * <p_u - anchor, e_i -
    centre> / (sigma^2 sqrt(d))``: the user's prompt against the mean input embedding of the item text's own tokens, in the
    model's embedding space (``models/item_match.py``). It gives each prompt a short path from the words that name an item's
    genre or mood to the rating, where the answer position alone buries them (docs/prompt_diagnosis.md). The term is part of
    the head, saved in every bank; a stage that moves prompts to another model (PUMA, ``vocab_map``) starts the target's own."""
    taste_prior: int = 0
    """With ``item_match``: before the prompts train, fit a prior over the users' match-term tastes shared by all users (a
    hierarchical linear model, EM for up to this many iterations, the iteration chosen on validation rows) and start each
    prompt at its posterior mean (``pipeline/taste_prior.py``, docs/prompt_diagnosis.md section 8). On clicks it fits the
    click logit's first-order residual over the offset (``residual``: a logistic base). 0: off."""
    residual: str = "auto"
    """``auto`` (default): ``user_item_bias`` on a rating task, chosen on validation (docs/results/prompt_learning_ml100k.md),
    and ``user_item_logodds`` on a click task (docs/prompt_diagnosis.md, section 9; resolved when the config loads).
    ``none`` (as published), or a no-LLM bias model whose
    prediction is added to the head's output, so the prompts and head learn only what it misses: ``item_bias``,
    ``user_item_bias`` (least squares, rating tasks) or ``item_logodds``, ``user_item_logodds`` (logistic, in the click
    logit's units: an item's popularity and a user's click rate, click tasks). The bias model is refitted from the dataset's training rows
    wherever the prompts are used (regularisation chosen on valid, as the reference of that name), so it needs no storage and is
    the same on every model: source, target, migrated and served banks share it."""


@dataclass
class AdapterConfig:
    kind: str = "compact"
    """``puma`` (4-block residual SiLU MLP, as published) or ``compact`` (default: 2-layer GELU with residual projection, a linear path the ``adapter.init`` maps can start; docs/results/demo.md)."""
    hidden: int = 256
    """Hidden width of the adapter's MLPs; default 256 (published: 4096 in the ``puma`` adapter)."""
    dropout: float = 0.1
    """Dropout inside the adapter's MLPs."""
    lr: float = 1e-3
    """Learning rate of the adapter (AdamW); default 1e-3 (published: 1e-4)."""
    epochs: int = 4
    """Adapter training epochs; the best epoch by ``val/loss`` is kept."""
    batch_size: int = 32
    """Adapter training batch size."""
    weight_decay: float = 0.01
    """AdamW weight decay on the adapter."""
    output_scale: str = "embedding_std"
    """``none`` (as published) or ``embedding_std`` (default): multiply the adapter output by the target model's embedding std, the units ``prompt.init=scaled`` trains in."""
    freeze_head: bool = False
    """Keep the rating head copied from the source run frozen (True) or train it with the adapter."""
    head_lr: Optional[float] = None
    """Learning rate of the head while the adapter trains (None: the adapter's ``lr``)."""
    polish_epochs: int = 0
    """After mapping, fine-tune every migrated prompt on the target for this many epochs (row ``puma_polish``, with its own cost); 0: no polish."""
    steps: Optional[int] = None
    """Train the adapter for this many optimiser steps instead of ``epochs`` (validated ``validations`` times); None: ``epochs``."""
    validations: int = 2
    """Under ``steps``: validate the adapter this many times, evenly spaced over its steps, the last after the final
    step, whatever the length of a pass over the selected users (a short pass would otherwise validate often, and a
    budget shorter than one pass never); under ``epochs``: after every epoch."""
    warmup_ratio: float = 0.0
    """Fraction of the adapter's steps over which its learning rate rises linearly before the cosine decay."""
    early_stopping_patience: Optional[int] = None
    """Stop the adapter when ``val/loss`` has not improved for this many validations (None: never)."""
    init: str = "random"
    """``random`` (each layer's default initialisation) or ``vocab_map``: start the adapter as the least-squares map
    between the two models' embeddings of shared single-token strings (its linear path set to that map, its nonlinear
    correction to zero), so training starts from the training-free migration instead of from noise; the map's fit,
    loading the source model included, is part of PUMA's cost. ``match_map``: start it instead as the map that carries
    the item-word match term (``prompt.item_match``): the transpose of the least-squares map from the target's token
    embeddings to the source's, scaled so a migrated prompt scores each item's words as its source prompt did.
    ``item_map``: ``match_map`` corrected on the catalogue's item texts, so the term is carried on the items the
    users rate. An aggregated source bank (``aggregate``) starts from each source model's own map, block by block,
    averaged over the sources. All need an adapter with a linear path (``compact``)."""
    aggregate_start: str = "mean"
    """For an aggregated source bank under a map ``init``: ``mean`` (each source's block of the map at ``1/S``) or
    ``valid``: before training, start instead from one source's block alone where the validation rows of every
    unselected user prefer it to the mean by two standard errors of the paired per-row loss (one validation pass per
    source, plus the mean's). The mean halves a good source's part where the other's prompts know little; measured
    on personal.yaml, validation could not tell the two apart and kept the mean (docs/prompt_diagnosis.md, section 8)."""
    input_norm: str = "none"
    """``none`` or ``standardize``: standardise every feature of the source prompts with its mean and std over all users before the adapter (saved with the adapter; ``migrate`` applies the same)."""
    keep_start: str = "none"
    """``none`` or ``valid``: after training, keep the adapter and head at their state before training (the
    ``adapter.init`` map) where that scores better on the validation rows of every unselected user (up to
    ``validation_max_users``) by two standard errors of the paired per-row loss, rows clustered by user. The trained
    checkpoints are chosen on the training loss and never include the start; on all of ``ml100k_full``'s users the
    untrained ``item_map`` kept the users where training spread them apart. Runs before ``shrink``."""
    shrink: str = "none"
    """``none`` or ``valid``: after training, pull every migrated prompt towards the mean migrated prompt, ``centre +
    alpha * (prompt - centre)``, with ``alpha`` from ``levers.shrink.SHRINK_GRID`` (0 to 1) chosen on the validation
    rows of every unselected user (up to ``validation_max_users``; 1, no change, unless a smaller one is better there by
    two standard errors). Saved with the adapter; ``migrate`` applies the same. For an adapter trained on a few users
    that spreads the prompts further apart than their data supports."""
    validation: str = "heldout"
    """Rows the adapter's best epoch is chosen on: ``selected`` (the selected users' own validation rows, as published), ``heldout`` (default, chosen on validation, docs/results/demo.md: the validation rows of as many other, seeded, unselected users as the budget) or ``heldout_all`` (the validation rows of every unselected user, up to ``validation_max_users``: a steadier choice for one forward pass per row and epoch, no gradient)."""
    validation_max_users: Optional[int] = 2000
    """Under ``validation=heldout_all``, at most this many unselected users (a seeded draw) validate the adapter, so that
    each validation's cost stays bounded on millions of users; None: every unselected user."""
    readout_rows: str = "auto"
    """Under ``prompt.hidden_readout=ridge``, the rows the target's readout is fitted on (closed form, no gradient step:
    one neutral forward per distinct item text): ``auto`` (default: ``all`` on a rating task, chosen on validation,
    docs/results/migration_levers_ml100k.md; ``selected`` on a click task, where no readout is fitted),
    ``selected`` (the adapter's own training and validation rows, as published),
    ``adapter_items`` (every user's training and validation rows of the items those rows name: more rows for the fit
    from items the adapter reads anyway; with prefixes computed in fixed groups its prefix cost is close to ``all``'s,
    docs/results/migration_levers_ml100k.md) or ``all`` (every user's training and validation rows, as full
    retraining's readout sees them, every item's prefix included); recorded as ``readout.train_rows``, not as training
    samples."""
    distill_items: int = 0
    """Distillation: for each selected user, this many items it has not rated, scored by the source model (prompts, head, model) and added to the adapter's training rows with the source's predicted rating and answer distribution (click probability) as soft targets; 0: off. The teacher's forward passes are part of PUMA's cost."""
    distill_weight: float = 0.5
    """Weight of the teacher rows' mean loss against the real rows' mean task loss in each batch."""


@dataclass
class BaselinesConfig:
    source: bool = True
    """Evaluate the source prompts on the source model."""
    random_init: bool = True
    """Random prompts on the target model, only the head trained."""
    full_retrain: bool = True
    """Retrain every user's prompt from scratch on the target model (the expensive reference)."""
    random_init_epochs: int = 1
    """Head-training epochs for ``random_init``."""
    vocab_map: bool = False
    """Also map the source prompts by a least-squares map between the two models' embeddings of shared single-token strings, with no training (row ``vocab_map``)."""
    shared_prompt: List[str] = field(default_factory=list)
    """Also train one prompt shared by all users on these models (``[source]``, ``[target]`` or both): what the frozen model adds about the items through their text, without personalisation (rows ``shared_prompt_source`` / ``shared_prompt_target``)."""
    classic: bool = True
    """Also fit the references that need no LLM on the same training rows, those that apply to the task (ratings: global mean, user + item biases, biased matrix factorisation, and a per-user ridge on item attributes where the items have them; clicks: popularity, item-item co-occurrence, and the attribute ridge as a linear probability model where the items have attributes; seconds)."""


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    """Lightning accelerator (``cpu``, ``gpu``, ``auto``)."""
    devices: Any = "auto"
    """Lightning devices (count, list or ``auto``)."""
    num_nodes: int = 1
    """Number of nodes for multi-node training."""
    strategy: str = "auto"
    """Lightning strategy (``auto``, ``ddp``, ``fsdp``...)."""
    precision: Optional[str] = None
    """Lightning precision; None picks ``bf16-mixed`` on GPU and ``32-true`` on CPU (the backbone dtype is set by ``model.dtype``)."""
    gradient_clip_val: float = 1.0
    """Gradient norm clipping."""
    log_every_n_steps: int = 10
    """TensorBoard logging interval in steps."""
    limit_train_batches: Optional[float] = None
    """Lightning's ``limit_train_batches`` (int batches or float fraction) — for quick runs."""
    limit_val_batches: Optional[float] = None
    """Lightning's ``limit_val_batches``."""
    fast_dev_run: bool = False
    """Run one batch of each stage only (a wiring check)."""
    enable_progress_bar: bool = True
    """Show progress bars."""
    num_threads: Optional[int] = None
    """torch CPU threads (None: torch's default)."""
    checkpoint_every_n_steps: int = 50
    """Training stages write a full-state ``<stage>/checkpoints/last.ckpt`` this often (and after each epoch) to resume from after a crash."""


@dataclass
class ChainConfig:
    models: list[str] = field(default_factory=list)
    """``chain``: models in hop order ``[A, B, C, ...]``; prompts are trained on A only, each later model gets the previous hop's migrated bank."""


@dataclass
class AggregateConfig:
    sources: list[str] = field(default_factory=list)
    """``aggregate``: source models ``[A, B, ...]`` whose prompts are concatenated along the feature axis and mapped to ``target`` by one adapter."""
    banks: list[str] = field(default_factory=list)
    """``aggregate``: existing source bank folders (same order as ``sources``, or alone); empty = train each source's prompts."""
    missing: str = "error"
    """Users missing from a source bank: ``error`` (stop, naming them), ``drop`` (keep only users in every bank) or ``zero_fill`` (zeros for the missing block, plus one present/absent indicator feature per source)."""


@dataclass
class ColdStartConfig:
    new_fraction: float = 0.2
    """``cold-start``: seeded fraction of users held out of the source bank and the adapter (the new users)."""
    new_users: list[str] = field(default_factory=list)
    """``cold-start``: explicit new user ids (overrides ``new_fraction``)."""
    finetune_epochs: int = 2
    """``cold-start``: target fine-tuning epochs after initialising new users' prompts through the adapter."""


@dataclass
class PlaceboConfig:
    resamples: int = 1000
    """Bootstrap resamples of the placebo intervals (personal gain, retained, captured share; see ``puma_lightning.tasks.placebo``). Every bank stage scores its test rows a second time with its prompts dealt to other users (a derangement seeded by ``seed``); the ``placebo`` command does the same for any bank."""


@dataclass
class ExperimentConfig:
    run_dir: str = "runs/default"
    """Directory a run writes into (config, banks, adapter, selection, results, TensorBoard logs)."""
    seed: int = 0
    """Global seed: data subset, prompt init, selection, shuffling."""
    seeds: Optional[List[int]] = None
    """``fit``, ``chain``, ``aggregate``, ``cold-start``: run the whole command once per seed (each its own data subset, source prompts, selection and adapter) in ``<run_dir>/seed_<s>/``, then write one table of mean ± std over seeds with paired bootstrap intervals on the same test rows (``fit``: against ``full_retrain`` and ``random_init``; ``chain``: each hop against its full retraining; ``aggregate``: against full retraining; ``cold-start``: against ``scratch``), e.g. ``seeds=[0,1,2]``. None: one run with ``seed``."""
    plugins: List[str] = field(default_factory=list)
    """Python modules imported when the config loads, before anything is looked up: yours that register datasets,
    templates, selection strategies, results rows or levers (``docs/extending.md``), e.g. ``plugins=[my_rows]``."""
    levers: Dict[str, Any] = field(default_factory=dict)
    """The settings of levers of your own (``docs/extending.md``), one section per lever: ``levers.NAME.KEY=value``;
    each is filled with its lever's defaults when the config loads. The built-in levers keep their keys in ``prompt``
    and ``adapter`` (``prompt.residual``, ``prompt.hidden_readout``, ``prompt.item_match``, ``adapter.init``,
    ``adapter.input_norm``, ``adapter.distill_items``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and template."""
    source: ModelConfig = field(default_factory=ModelConfig)
    """The old foundation model whose prompts are migrated."""
    target: ModelConfig = field(default_factory=lambda: ModelConfig(name="tiny-gemma3"))
    """The new foundation model the prompts are migrated to."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Per-user prompt tuning (source prompts and the full-retraining baseline)."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """The PUMA migration adapter."""
    selection: Any = field(default_factory=lambda: {"name": "puma", "budget": 100, "n_clusters": 8, "min_per_cluster": 2})
    """User-selection strategy: ``name``, ``budget`` and that strategy's parameters (``strategies/NAME.yaml``). Default:
    ``puma`` with 8 clusters of at least 2 users (published: 15 clusters of 50, sized for budgets of 2,000;
    docs/results/demo.md); a config or ``selection.name=`` naming another strategy starts from that strategy's own
    parameters (keeping the budget)."""
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    """Which comparison rows ``fit`` computes."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings."""
    cache_dir: Optional[str] = None
    """Where converted packaged models live (default ``$PUMA_CACHE`` or ``~/.cache/puma_lightning``)."""
    source_dir: Optional[str] = None
    """Reuse the finished source stage (``<dir>/bank``, ``<dir>/stage.json``) of another run instead of ``<run_dir>/source`` (sweeps share one)."""
    chain: ChainConfig = field(default_factory=ChainConfig)
    """Chained migration A -> B -> C (``chain`` command)."""
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    """Aggregated migration [A, B] -> target (``aggregate`` command)."""
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    """Users new on the target (``cold-start`` command)."""
    placebo: PlaceboConfig = field(default_factory=PlaceboConfig)
    """What each bank's prompts know about their own user: the placebo columns and the ``placebo`` command."""
    resume: Optional[bool] = None
    """Resume an interrupted training stage from its ``last.ckpt``: null = automatically when the run directory holds an unfinished stage of the same config, true = same (and say so), false = start the stage over."""
