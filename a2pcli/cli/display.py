"""Turns library progress events into rich bars, JSON lines, or nothing. All of it on stderr.

A run of several items (progress.Reporter.item) shows each as `[k/n] name`, its stages from zero (elapsed
time and ETA per item), and the item's result line (or its error) as soon as it finishes.

One of several processes writing to the same terminal (torchrun's) gets a `tag`, {"rank": r}: its JSON events
carry it, its lines start with `rank r: `, and only rank 0 draws bars, when asked to (`--progress rich`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from a2pcli.cli.options import ProgressMode

JSON_MIN_INTERVAL_S = 0.1  # at most ten progress lines a second in --progress json
Describe = Callable[[dict], str]  # an item's result (its --json object) -> the line printed when it finishes


def _emit_json(obj: dict) -> None:
    sys.stderr.write(json.dumps(obj, default=str) + "\n")
    sys.stderr.flush()


def _item_header(ev: dict) -> str:
    inputs = " + ".join(v.rsplit("/", 1)[-1] for v in ev["inputs"].values())
    return f"[{ev['index']}/{ev['of']}] {inputs} -> {ev['item']}"


def _prefix(tag: dict | None) -> str:
    return f"rank {tag['rank']}: " if tag else ""


class JsonSink:
    """Rhubarb-style machine-readable progress: start / progress (0..1) / warning / info / item / item_done /
    item_error / done / error, each event carrying the item it belongs to ("item") and the `tag` (the rank)."""

    def __init__(self, command: str, tag: dict | None = None):
        self.command = command
        self.tag = dict(tag or {})
        self._last = 0.0
        self.t0 = time.monotonic()
        self._stage_t0 = self.t0

    def _emit(self, obj: dict) -> None:
        _emit_json({**obj, **self.tag})

    def start(self) -> None:
        self._emit({"event": "start", "command": self.command})

    def _with_item(self, ev: dict, out: dict) -> dict:
        if "item" in ev:
            out["item"] = ev["item"]
        return out

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "stage":
            self._last = self._stage_t0 = time.monotonic()
            self._emit(self._with_item(ev, {"event": "progress", "stage": ev["stage"], "value": 0.0, "done": 0,
                                            "total": ev["total"]}))
        elif kind == "progress":
            now = time.monotonic()
            total = ev["total"]
            finished = total is not None and ev["done"] >= total
            if not finished and now - self._last < JSON_MIN_INTERVAL_S:
                return
            self._last = now
            value = min(1.0, ev["done"] / total) if total else None
            out = {"event": "progress", "stage": ev["stage"], "value": value, "done": ev["done"], "total": total}
            if total and ev["done"] > 0:  # linear extrapolation of the stage so far
                out["eta_s"] = round((now - self._stage_t0) / ev["done"] * max(0, total - ev["done"]), 1)
            self._emit(self._with_item(ev, out))
        else:
            self._emit(ev if kind.startswith("item") else self._with_item(ev, {"event": kind,
                                                                              "message": ev.get("message", "")}))

    def done(self, summary: dict) -> None:
        self._emit({"event": "done", "command": self.command, "elapsed_s": round(time.monotonic() - self.t0, 3),
                    "summary": summary})

    def failed(self, summary: dict, message: str, exit_code: int) -> None:
        """The run ended with failed items: the error event names the first, the summary lists every item."""
        self._emit({"event": "error", "command": self.command, "message": message, "exit_code": exit_code,
                    "elapsed_s": round(time.monotonic() - self.t0, 3), "summary": summary})

    def error(self, message: str, exit_code: int) -> None:
        self._emit({"event": "error", "command": self.command, "message": message, "exit_code": exit_code})

    def close(self) -> None:
        pass


class _Lines:
    """What the human sinks share: an item's `[k/n]` header (printed with the item's first line, so an item
    refused before any work shows its error line alone), result lines, error lines (the same not twice in a row)."""

    def __init__(self, write: Callable[[str], None], quiet: bool, describe: Describe | None):
        self.write, self.quiet, self.describe = write, quiet, describe
        self.last_error: str | None = None
        self.pending: str | None = None

    def item(self, ev: dict) -> None:
        self.pending = _item_header(ev) if ev["of"] > 1 and not self.quiet else None

    def flush(self) -> None:
        """Print the item's header if it is still pending."""
        if self.pending is not None:
            self.write(self.pending)
            self.pending = None

    def line(self, text: str) -> None:
        self.flush()
        self.write(text)

    def item_done(self, ev: dict) -> None:
        if not self.quiet and self.describe is not None:
            self.line(self.describe(ev["result"]))
        self.pending = None

    def item_error(self, ev: dict) -> None:
        self.pending = None
        if ev["message"] != self.last_error:
            self.write(f"error: {ev['message']}")
        self.last_error = ev["message"]


class RichSink:
    """One bar per stage of the current item, with counts, elapsed time and ETA; lines printed above the bars."""

    def __init__(self, command: str, describe: Describe | None = None, tag: dict | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.command = command
        self.prefix = _prefix(tag)
        self.lines = _Lines(self._print, False, describe)

    def _print(self, text: str) -> None:
        self.progress.console.print(self.prefix + text, highlight=False, markup=False)

    def _warn(self, text: str) -> None:
        self.progress.console.print(f"{self.prefix}[yellow]warning:[/] {text}", highlight=False)

    def start(self) -> None:
        self.progress.start()

    def _new_item(self) -> None:
        for task in self.tasks.values():  # the last item's bars go: this item's start from zero
            self.progress.remove_task(task)
        self.tasks = {}

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "stage":
            self.lines.flush()
            name = ev["stage"]
            if name in self.tasks:
                self.progress.reset(self.tasks[name], total=ev["total"])
            else:
                self.tasks[name] = self.progress.add_task(name, total=ev["total"])
        elif kind == "progress":
            task = self.tasks.get(ev["stage"])
            if task is not None:
                self.progress.update(task, completed=ev["done"], total=ev["total"])
        elif kind == "warning":
            self.lines.flush()
            self._warn(ev["message"])
        elif kind == "info":
            self.lines.line(ev["message"])
        elif kind == "item":
            self._new_item()
            self.lines.item(ev)
        elif kind == "item_done":
            self.lines.item_done(ev)
        elif kind == "item_error":
            self.lines.item_error(ev)

    def done(self, summary: dict) -> None:
        self.close()

    def failed(self, summary: dict, message: str, exit_code: int) -> None:
        self.close()

    def error(self, message: str, exit_code: int) -> None:
        self.close()

    def close(self) -> None:
        self.progress.stop()


class PlainSink:
    """No bars (not a terminal, or --progress none): lines still go to stderr (errors even with --quiet)."""

    def __init__(self, command: str, quiet: bool, describe: Describe | None = None, tag: dict | None = None):
        self.quiet = quiet
        prefix = _prefix(tag)
        self.lines = _Lines(lambda text: sys.stderr.write(prefix + text + "\n"), quiet, describe)

    def start(self) -> None:
        pass

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "item_error":
            self.lines.item_error(ev)
        elif self.quiet:
            return
        elif kind == "warning":
            self.lines.line(f"warning: {ev['message']}")
        elif kind == "info":
            self.lines.line(ev["message"])
        elif kind == "item":
            self.lines.item(ev)
        elif kind == "item_done":
            self.lines.item_done(ev)

    def done(self, summary: dict) -> None:
        pass

    def failed(self, summary: dict, message: str, exit_code: int) -> None:
        pass

    def error(self, message: str, exit_code: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_sink(command: str, mode: ProgressMode, quiet: bool, describe: Describe | None = None,
              tag: dict | None = None):
    """The display for `mode`. With a `tag` (one of several processes) `auto` draws no bars, and `rich` draws them
    for rank 0 alone: bars of several processes cannot share a terminal."""
    if mode == ProgressMode.json:
        return JsonSink(command, tag)
    if quiet or mode == ProgressMode.none:
        return PlainSink(command, quiet, describe, tag)
    bars = mode == ProgressMode.rich or (mode == ProgressMode.auto and sys.stderr.isatty())
    if bars and (not tag or (mode == ProgressMode.rich and tag.get("rank") == 0)):
        return RichSink(command, describe, tag)
    return PlainSink(command, quiet, describe, tag)
