"""A ranked result, apart from the numpy that scores it: a client of a warm server builds
these from the server's answer without importing numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One ranked result: corpus row ``index`` (``item`` is what the caller gave for it)."""

    rank: int
    index: int
    score: float
    item: Any = None

    @property
    def text(self) -> str:
        """The text ranked (``item`` itself, or its ``.text``)."""
        return getattr(self.item, "text", self.item)

    @property
    def source(self) -> str | None:
        """Where the text came from (``notes.txt:12``), when the item says."""
        return getattr(self.item, "source", None)
