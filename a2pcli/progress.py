"""Progress reporting from the library to whoever displays it.

The library never prints. Long stages call a `Reporter`; the CLI gives it a sink that draws
rich bars, writes JSON lines on stderr, or drops everything (`--quiet`).

Events (dicts) a sink receives:
    {"event": "stage", "stage": str, "total": int | None}
    {"event": "progress", "stage": str, "done": int, "total": int | None}
    {"event": "warning", "message": str}
    {"event": "info", "message": str}
A run of several items (one video per portrait and speech file, one job per manifest line) brackets each:
    {"event": "item", "item": str, "index": k, "of": n, "inputs": {name: path}}   item k of n begins
    ... its stage, progress, warning and info events, each with "item": str ...
    {"event": "item_done", "item": str, "result": dict}  or
    {"event": "item_error", "item": str, "message": str, "exit_code": int}
Every stage ends with a progress event at its total (done == total), also a stage whose length was not
known: it ends at done == total == the steps it took (at least 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Sink = Callable[[dict], None]
T = TypeVar("T")


def _drop(event: dict) -> None:
    return None


class Reporter:
    """Thin front over a sink: stage(), advance(), warn(), item(). Safe to call with no sink."""

    def __init__(self, sink: Sink | None = None):
        self._sink = sink or _drop
        self.stage_name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.warnings: list[str] = []
        self.item_name: str | None = None
        self._said: set[str] = set()  # messages sent with once=True

    def _send(self, event: dict) -> None:
        if self.item_name is not None:
            event["item"] = self.item_name
        self._sink(event)

    def stage(self, name: str, total: int | None = None) -> None:
        self.end_stage()
        self.stage_name, self.total, self.done = name, total, 0
        self._send({"event": "stage", "stage": name, "total": total})

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._send({"event": "progress", "stage": self.stage_name, "done": self.done, "total": total})

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._send({"event": "progress", "stage": self.stage_name, "done": self.done, "total": self.total})

    def end_stage(self) -> None:
        """Finish the current stage: a last progress event at its total (its steps, when it had none)."""
        if self.stage_name is None:
            return
        if self.total is None or self.done != self.total:
            self.total = self.done = max(self.done, 1) if self.total is None else self.total
            self._send({"event": "progress", "stage": self.stage_name, "done": self.done, "total": self.total})
        self.stage_name = None

    def warn(self, message: str, once: bool = False) -> None:
        if once and message in self._said:
            return
        self._said.add(message)
        self.warnings.append(message)
        self._send({"event": "warning", "message": message})

    def info(self, message: str, once: bool = False) -> None:
        """A line for the user (`once`: not again when the same line was already said in this run)."""
        if once and message in self._said:
            return
        self._said.add(message)
        self._send({"event": "info", "message": message})

    def track(self, items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
        """Iterate `items`, reporting one step per item under stage `name`."""
        self.stage(name, total)
        for item in items:
            yield item
            self.advance()
        self.end_stage()

    # -- items of a run ----------------------------------------------------------------------------------

    def item(self, name: str, index: int, of: int, inputs: dict[str, str]) -> None:
        """Item `index` (1-based) of `of` begins (`inputs`: its inputs by name): the events until
        item_done/item_error carry its name."""
        self.end_stage()
        self.item_name = None
        self._sink({"event": "item", "item": name, "index": index, "of": of, "inputs": dict(inputs)})
        self.item_name = name

    def item_done(self, result: dict) -> None:
        self.end_stage()
        self._send({"event": "item_done", "result": result})
        self.item_name = None

    def item_error(self, message: str, exit_code: int) -> None:
        self.stage_name = None
        self._send({"event": "item_error", "message": message, "exit_code": exit_code})
        self.item_name = None
