"""MovieLens-100k, read from the copy shipped inside the ``recbole==1.2.1`` wheel: its ratings (``movielens-100k``) and
the same films as implicit feedback (``movielens-100k-click``, see :mod:`puma_lightning.data.implicit`).

The files are RecBole "atomic files": tab-separated, with a typed header such as
``user_id:token  item_id:token  rating:float  timestamp:float``. The ``recbole`` package itself is
never imported (its ``__init__`` pulls heavy dependencies): its folder is located with
``importlib.util.find_spec``, which reads the package's location without executing it.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import numpy as np

from .implicit import implicit_feedback
from .splits import chronological_split, keep_latest, limit_users
from .registry import Dataset, register_dataset
from .table import InteractionTable

_INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
_ARTICLES = ("The", "A", "An", "Il", "La", "Le", "Les", "L'", "Das", "Der", "Die", "El", "Lo")
_TRAILING_ARTICLE = re.compile(
    r"^(?P<main>.+), (?P<art>" + "|".join(map(re.escape, _ARTICLES)) + r")(?P<rest> \(.*\))?$"
)


def movielens_100k_dir() -> Path:
    """Folder holding ``ml-100k.inter`` / ``.item`` / ``.user`` inside the installed recbole wheel."""
    spec = importlib.util.find_spec("recbole")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MovieLens-100k ships in the recbole wheel, which is not installed: {_INSTALL_HINT}"
        )
    for base in spec.submodule_search_locations:
        folder = Path(base) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file() and (folder / "ml-100k.item").is_file():
            return folder
    raise FileNotFoundError(f"recbole is installed without dataset_example/ml-100k; reinstall: {_INSTALL_HINT}")


def _read_atomic(path: Path) -> dict[str, list[str]]:
    """Read a RecBole atomic file into columns keyed by field name (the ``:type`` suffix dropped)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.split(":", 1)[0] for name in next(reader)]
        columns: list[list[str]] = [[] for _ in header]
        for line in reader:
            if not line:
                continue
            line = line + [""] * (len(header) - len(line))
            for col, value in zip(columns, line):
                col.append(value)
    return dict(zip(header, columns))


def _readable_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects' (MovieLens stores articles at the end)."""
    match = _TRAILING_ARTICLE.match(title.strip())
    if not match:
        return title.strip()
    sep = "" if match["art"].endswith("'") else " "
    return f"{match['art']}{sep}{match['main']}{match['rest'] or ''}"


def _join_naturally(words: list[str]) -> str:
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def movie_text(title: str, year: str, genres: str) -> str:
    """Item text such as ``"Toy Story (1995), an Animation, Children's and Comedy film"``."""
    title = _readable_title(title)
    if not title or title.lower() in ("unknown", "unkonwn"):
        title = "An unknown movie"
    year = year.strip()
    head = f"{title} ({year})" if year.isdigit() else title
    kinds = [g for g in genres.split() if g.lower() != "unknown"]
    if not kinds:
        return head
    phrase = _join_naturally(kinds)
    article = "an" if phrase[0].lower() in "aeiou" else "a"
    return f"{head}, {article} {phrase} film"


def load_movielens_100k(
    max_users: int | None = None,
    seed: int = 0,
    max_rows_per_user: int | None = None,
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
) -> InteractionTable:
    """Load MovieLens-100k ratings as an :class:`InteractionTable`, split chronologically per user.

    Item index ``k`` is MovieLens item id ``k + 1`` (items in id order); user ids keep their
    MovieLens strings. ``max_users`` picks a seeded subset (:func:`limit_users`),
    ``max_rows_per_user`` keeps each user's latest rows (:func:`keep_latest`), then the split.
    """
    folder = movielens_100k_dir()
    inter_path, item_path = folder / "ml-100k.inter", folder / "ml-100k.item"
    items = _read_atomic(item_path)
    item_ids = [int(i) for i in items["item_id"]]
    order = np.argsort(item_ids, kind="stable")
    item_index = {item_ids[j]: k for k, j in enumerate(order)}
    item_texts = [movie_text(items["movie_title"][j], items["release_year"][j], items["class"][j]) for j in order]

    contiguous = sorted(item_ids) == list(range(1, len(item_ids) + 1))
    inter = _read_atomic(inter_path)
    raw_users = np.asarray(inter["user_id"], dtype=np.int64)
    user_values, user = np.unique(raw_users, return_inverse=True)
    try:
        item = np.fromiter((item_index[int(i)] for i in inter["item_id"]), dtype=np.int64, count=len(raw_users))
    except KeyError as err:
        raise ValueError(f"{inter_path} rates item {err} that {item_path} does not list") from None
    table = InteractionTable(
        user=user.astype(np.int64),
        item=item,
        label=np.asarray(inter["rating"], dtype=np.float32),
        timestamp=np.asarray(inter["timestamp"], dtype=np.float64).astype(np.int64),
        split=np.zeros(len(user), dtype=np.int8),
        user_ids=[str(u) for u in user_values],
        item_texts=item_texts,
        task="rating",
        item_ids=[str(item_ids[j]) for j in order],
        meta={
            "name": "movielens-100k",
            "source_files": [str(inter_path), str(item_path)],
            "raw_counts": {"users": int(len(user_values)), "items": len(item_texts), "rows": int(len(user))},
            "item_index": "items in MovieLens id order"
            + (" (id k -> index k - 1)" if contiguous else f"; ids {sorted(item_ids)}"),
            "floor_rmse": None,
        },
    )
    table = limit_users(table, max_users, seed=seed)
    table = keep_latest(table, max_rows_per_user)
    table = chronological_split(table, valid_ratio=valid_ratio, test_ratio=test_ratio)
    table.meta["counts"] = {"users": table.n_users, "items": table.n_items, "rows": len(table)}
    return table


def _build(dcfg, seed: int) -> InteractionTable:  # noqa: ANN001 - DictConfig
    return load_movielens_100k(max_users=dcfg.max_users, seed=seed, max_rows_per_user=dcfg.max_rows_per_user,
                               valid_ratio=dcfg.valid_ratio, test_ratio=dcfg.test_ratio)


register_dataset(Dataset("movielens-100k", "rating", "MovieLens-100k ratings from the packaged files", "movie", build=_build))


def _build_clicks(dcfg, seed: int) -> InteractionTable:  # noqa: ANN001 - DictConfig
    rated = load_movielens_100k(max_users=dcfg.max_users, seed=seed, valid_ratio=dcfg.valid_ratio, test_ratio=dcfg.test_ratio)
    table = implicit_feedback(rated, dcfg.max_rows_per_user, int(dcfg.get("negatives_per_positive", 1)), seed,
                              dcfg.valid_ratio, dcfg.test_ratio)
    table.meta["name"] = "movielens-100k-click"
    table.meta["counts"] = {"users": table.n_users, "items": table.n_items, "rows": len(table)}
    return table


register_dataset(Dataset("movielens-100k-click", "click", "MovieLens-100k as implicit feedback: the films each user rated "
                         "against sampled films they did not (data.negatives_per_positive)", "item_first_click",
                         build=_build_clicks))
