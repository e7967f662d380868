"""Turns library progress events into rich bars, JSON lines, or nothing. All of it on stderr."""

from __future__ import annotations

import json
import sys
import time

from a2pcli.cli.options import ProgressMode

JSON_MIN_INTERVAL_S = 0.1  # at most ten progress lines a second in --progress json


def _emit_json(obj: dict) -> None:
    sys.stderr.write(json.dumps(obj, default=str) + "\n")
    sys.stderr.flush()


class JsonSink:
    """Rhubarb-style machine-readable progress: start / progress (0..1) / warning / done / error."""

    def __init__(self, command: str):
        self.command = command
        self._last = 0.0
        self.t0 = time.monotonic()

    def start(self) -> None:
        _emit_json({"event": "start", "command": self.command})

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "stage":
            _emit_json({"event": "progress", "stage": ev["stage"], "value": 0.0, "done": 0, "total": ev["total"]})
            self._last = time.monotonic()
            self._stage_t0 = self._last
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
                spent = now - getattr(self, "_stage_t0", self.t0)
                out["eta_s"] = round(spent / ev["done"] * max(0, total - ev["done"]), 1)
            _emit_json(out)
        else:
            _emit_json({"event": kind, "message": ev.get("message", "")})

    def done(self, summary: dict) -> None:
        _emit_json({"event": "done", "command": self.command, "elapsed_s": round(time.monotonic() - self.t0, 3),
                    "summary": summary})

    def error(self, message: str, exit_code: int) -> None:
        _emit_json({"event": "error", "command": self.command, "message": message, "exit_code": exit_code})

    def close(self) -> None:
        pass


class RichSink:
    """One bar per stage, with counts, elapsed time and ETA; warnings printed above the bars."""

    def __init__(self, command: str):
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

    def start(self) -> None:
        self.progress.start()

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "stage":
            name = ev["stage"]
            if name in self.tasks:
                self.progress.update(self.tasks[name], total=ev["total"])
            else:
                self.tasks[name] = self.progress.add_task(name, total=ev["total"])
        elif kind == "progress":
            task = self.tasks.get(ev["stage"])
            if task is not None:
                self.progress.update(task, completed=ev["done"], total=ev["total"])
        elif kind == "warning":
            self.progress.console.print(f"[yellow]warning:[/] {ev['message']}", highlight=False)
        elif kind == "info":
            self.progress.console.print(ev["message"], highlight=False)

    def done(self, summary: dict) -> None:
        self.close()

    def error(self, message: str, exit_code: int) -> None:
        self.close()

    def close(self) -> None:
        self.progress.stop()


class PlainSink:
    """No bars (not a terminal, or --progress none): warnings still go to stderr unless quiet."""

    def __init__(self, command: str, quiet: bool):
        self.quiet = quiet

    def start(self) -> None:
        pass

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        if ev["event"] == "warning":
            sys.stderr.write(f"warning: {ev['message']}\n")
        elif ev["event"] == "info":
            sys.stderr.write(f"{ev['message']}\n")

    def done(self, summary: dict) -> None:
        pass

    def error(self, message: str, exit_code: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_sink(command: str, mode: ProgressMode, quiet: bool):
    if mode == ProgressMode.json:
        return JsonSink(command)
    if quiet or mode == ProgressMode.none:
        return PlainSink(command, quiet)
    if mode == ProgressMode.rich or (mode == ProgressMode.auto and sys.stderr.isatty()):
        return RichSink(command)
    return PlainSink(command, quiet)
