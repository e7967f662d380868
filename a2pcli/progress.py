"""Progress reporting from the library to whoever displays it.

The library never prints. Long stages call a `Reporter`; the CLI gives it a sink that draws
rich bars, writes JSON lines on stderr, or drops everything (`--quiet`).

Events (dicts) a sink receives:
    {"event": "stage", "stage": str, "total": int | None}
    {"event": "progress", "stage": str, "done": int, "total": int | None}
    {"event": "warning", "message": str}
    {"event": "info", "message": str}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Sink = Callable[[dict], None]
T = TypeVar("T")


def _drop(event: dict) -> None:
    return None


class Reporter:
    """Thin front over a sink: stage(), advance(), warn(). Safe to call with no sink."""

    def __init__(self, sink: Sink | None = None):
        self._sink = sink or _drop
        self.stage_name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.warnings: list[str] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.stage_name, self.total, self.done = name, total, 0
        self._sink({"event": "stage", "stage": name, "total": total})

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._sink({"event": "stage", "stage": self.stage_name, "total": total})

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._sink({"event": "progress", "stage": self.stage_name, "done": self.done, "total": self.total})

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._sink({"event": "warning", "message": message})

    def info(self, message: str) -> None:
        self._sink({"event": "info", "message": message})

    def track(self, items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
        """Iterate `items`, reporting one step per item under stage `name`."""
        self.stage(name, total)
        for item in items:
            yield item
            self.advance()
