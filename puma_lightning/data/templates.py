"""Prompt templates: the text around the user-prompt slot, one per dataset family.

A template is split at the slot into the text ``before`` and ``after`` it. Both may contain
``{item}``, replaced by the item's text, and ``{history}``, replaced by per-row context
(``InteractionTable.row_text``, e.g. MIND's history titles). The slot itself is ``prompt_length`` placeholder
positions whose input embeddings are replaced by the user's soft prompt. The last token of
``after`` is the answer position whose next-token logits are read.
"""

from __future__ import annotations

from dataclasses import dataclass


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
