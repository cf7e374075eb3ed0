"""Streaming readers for the raw files users download (Amazon Reviews 2023, Yelp, MIND).

Each reader turns raw files into a :class:`~puma_lightning.data.raw.common.RawData` (integer-coded
interactions plus id maps and texts) while keeping only the fields it needs; the filters and the
on-disk processed format live in :mod:`puma_lightning.data.prepare` and
:mod:`puma_lightning.data.processed`.
"""

from .common import BadLines, FileRecord, RawData, open_lines

__all__ = ["BadLines", "FileRecord", "RawData", "open_lines"]
