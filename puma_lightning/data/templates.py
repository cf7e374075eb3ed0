"""Prompt templates: the text around the user-prompt slot, one per dataset family.

A template is split at the slot into the text ``before`` and ``after`` it. Both may contain
``{item}``, replaced by the item's text, and ``{history}``, replaced by per-row context
(``InteractionTable.row_text``, e.g. MIND's history titles). The slot itself is ``prompt_length`` placeholder
positions whose input embeddings are replaced by the user's soft prompt. The last token of
``after`` is the answer position whose next-token logits are read.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from puma_lightning.errors import PumaError


NO_HISTORY = "none"
"""``{history}`` text of a row without history (or a table without ``row_text``)."""


@dataclass(frozen=True)
class Template:
    """A prompt template with one user slot and an answer cue at the end."""

    name: str
    before: str
    after: str
    answers: tuple[str, ...]
    """Answer tokens read at the answer position: "1".."5" for ratings, ("Yes",) for clicks."""

    def render(self, item_text: str, history: str = NO_HISTORY) -> tuple[str, str]:
        """Text before and after the slot for one item (and one row's history text)."""
        return self.before.format(item=item_text, history=history), self.after.format(item=item_text, history=history)

    @property
    def uses_history(self) -> bool:
        """True when the text depends on the row (``{history}``), not only on the item."""
        return "{history}" in self.before or "{history}" in self.after


RATING_ANSWERS = ("1", "2", "3", "4", "5")
CLICK_ANSWERS = ("Yes",)
TASK_ANSWERS = {"rating": RATING_ANSWERS, "click": CLICK_ANSWERS}
"""The answers each task's head reads (five rating levels; the one "Yes" token) and an inline template's default."""
TASK_TEMPLATES = {"rating": "item", "click": "item_click"}
"""``data.template=auto`` for a dataset of either task whose own template reads the other task's answers."""
SLOT = "{user}"
"""The marker of the user slot in an inline template's ``text`` (where the soft prompt goes)."""
INLINE_KEYS = ("text", "answers", "name")

_QUESTION = "#Question: We have information about the user's preferences encoded in the feature "
_RATING_TAIL = ". Predict the user's rating (as an integer between 1 and 5) for the {kind} {{item}}.\n#Answer:"

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Add a template to the registry; names are unique."""
    if template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


register_template(Template("movie", _QUESTION, _RATING_TAIL.format(kind="movie"), RATING_ANSWERS))
register_template(Template("movie_tv", _QUESTION, _RATING_TAIL.format(kind="movie/TV"), RATING_ANSWERS))
register_template(Template("business", _QUESTION, _RATING_TAIL.format(kind="business"), RATING_ANSWERS))
register_template(
    Template(
        "news_click",
        "A user has interacted with the following news headlines: {history}. Additionally, we have information "
        "about the user's preferences encoded in the feature ",
        ". Using all available information, make a prediction about whether the user would enjoy the news "
        'with title {item}? Answer with "Yes" or "No".\n#Answer:',
        CLICK_ANSWERS,
    )
)
register_template(
    Template(
        "item_click",
        _QUESTION,
        '. Would the user click on the item {item}? Answer with "Yes" or "No".\n#Answer:',
        CLICK_ANSWERS,
    )
)


class TemplateError(PumaError):
    """An inline template (``data.template``) that cannot be used; the message names the key and what was expected."""


def inline_template(spec: Mapping[str, Any], task: str, where: str = "data.template") -> Template:
    """A :class:`Template` from a config mapping ``{text, answers?, name?}``, checked: ``text`` holds ``{item}``, at most
    ``{history}`` besides, exactly one ``{user}`` slot, and ends with the answer cue (text after the slot, no trailing
    whitespace: the next token after it is the answer); ``answers`` (default: the task's) are as many as the task's head reads."""
    unknown = sorted(set(spec) - set(INLINE_KEYS))
    if unknown:
        raise TemplateError(f"'{where}' has unknown key(s) {unknown}; an inline template has: {', '.join(INLINE_KEYS)}")
    text = spec.get("text")
    if isinstance(text, Mapping):  # YAML reads an unquoted "...#Answer:" on the command line as a mapping
        raise TemplateError(f"'{where}.text' was read as a mapping, not text (YAML takes an unquoted value ending with ':' "
                            f"as a key); quote it: '{where}.text=\"...#Answer:\"'")
    if not isinstance(text, str) or not text.strip():
        raise TemplateError(f"'{where}.text' must be the template's text with {{item}} and one {SLOT}, got {text!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"'{where}.text': {exc} (write a literal brace as {{{{ or }}}})") from None
    odd = sorted({f for f in fields if f not in ("item", "history", "user")})
    if odd:
        raise TemplateError(f"'{where}.text' has placeholder(s) {['{' + f + '}' for f in odd]}; allowed: {{item}}, {{history}}, "
                            f"{SLOT} (write a literal brace as {{{{ or }}}})")
    slots = fields.count("user")
    if slots != 1:
        raise TemplateError(f"'{where}.text' has {slots} {SLOT} slot markers; expected exactly one, where the user's soft "
                            "prompt goes")
    if "item" not in fields:
        raise TemplateError(f"'{where}.text' has no {{item}}: the model would not see which item it is asked about")
    before, after = text.split(SLOT)
    if not after.strip() or after.rstrip() != after or after.endswith(("{item}", "{history}")):
        raise TemplateError(f"'{where}.text' must end with the answer cue after the {SLOT} slot (e.g. '.\\n#Answer:'), "
                            f"with no trailing whitespace: the next token after it is read as the answer; it ends {text[-20:]!r}")
    answers = spec.get("answers")
    expected = TASK_ANSWERS[task]
    if answers is None:
        answers = expected
    if isinstance(answers, str) or not all(isinstance(a, str) and a for a in answers):
        raise TemplateError(f"'{where}.answers' must be a list of non-empty strings, got {answers!r}")
    answers = tuple(answers)
    if len(answers) != len(expected) or len(set(answers)) != len(answers):
        raise TemplateError(f"'{where}.answers' is {list(answers)}; data.task={task} reads {len(expected)} distinct answer "
                            f"token(s) ({'the ratings 1 to 5, lowest first' if task == 'rating' else 'the positive answer'}), "
                            f"e.g. {list(expected)}")
    return Template(str(spec.get("name") or "inline"), before, after, answers)


def resolve_template(value: Any, task: str) -> Template:
    """``data.template`` as a :class:`Template`: a registered name, or an inline mapping (:func:`inline_template`)."""
    if isinstance(value, Mapping):
        return inline_template(value, task)
    return get_template(str(value))


def template_label(value: Any, task: str) -> str:
    """How records, keys and bank manifests name ``data.template``: the name, or an inline template's name and the hash
    of its content (two inline templates of one name never pass for each other)."""
    if not isinstance(value, Mapping):
        return str(value)
    template = resolve_template(value, task)
    digest = hashlib.sha256(json.dumps([template.before, template.after, list(template.answers)]).encode()).hexdigest()
    return f"{template.name}-{digest[:8]}"


def get_template(name: str) -> Template:
    """Look up a template by name, with the list of valid names in the error."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


# -- item-first template (issue #6): the question and the item come before the slot, so everything
# but the slot and the answer cue (".\n#Answer:", a few tokens) is a per-item prefix whose keys and
# values the backbone's prefix cache computes once per item and reuses across users and epochs.
register_template(
    Template(
        "item_first",
        "#Question: Predict the rating (as an integer between 1 and 5) that a user gives the movie {item}. "
        "The user's preferences are encoded in the feature ",
        ".\n#Answer:",
        RATING_ANSWERS,
    )
)


# -- item-first with the user's rated history (issue #17): the latest training ratings of the user
# before the row, as ``data.rated_history`` fills ``{history}``; every row's prefix is its own.
register_template(
    Template(
        "item_first_history",
        "#Question: A user rated these movies from 1 to 5: {history}. Predict the rating (as an integer between "
        "1 and 5) that the user gives the movie {item}. The user's preferences are encoded in the feature ",
        ".\n#Answer:",
        RATING_ANSWERS,
    )
)


# -- item-first click template (issue #31): the question and the item before the slot (a per-item prefix the cache
# reuses, as ``item_first``), answered "Yes" or "No"; MovieLens as implicit feedback and synthetic clicks use it.
register_template(
    Template(
        "item_first_click",
        '#Question: Answer "Yes" or "No": would the user choose to watch the movie {item}? '
        "The user's preferences are encoded in the feature ",
        ".\n#Answer:",
        CLICK_ANSWERS,
    )
)


# -- a generic rating template for items of any kind (the ``interactions`` dataset's default).
register_template(Template("item", _QUESTION, _RATING_TAIL.format(kind="item"), RATING_ANSWERS))
