"""Runs of several items (one video per portrait and speech file, one .pose per video, one job per manifest
line) with the behaviour a script relies on: every item is checked before any work and each bad one reported,
the good ones are made, each announced (k of n) and reported as it finishes, and the run says what failed.

    result = run_items(items, make, reporter, check)   # -> RunResult: outputs and failures, in item order
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from a2pcli.errors import A2PError
from a2pcli.pipeline.results import Failure, RunResult, input_names
from a2pcli.progress import Reporter


@dataclass(frozen=True)
class Item:
    inputs: dict  # by name: paths (or arrays given through the Python API)
    output: Path | None
    key: object = None  # what the caller knows the item by (a manifest line)

    @property
    def name(self) -> str:
        """What progress calls the item: its output's file name (unique in a run)."""
        if self.output is not None:
            return Path(self.output).name
        names = input_names(self.inputs)
        return Path(next(iter(names.values()))).name if names else str(self.key)


def run_items(items: list[Item], make: Callable[[Item], object], reporter: Reporter | None = None,
              check: Callable[[Item], None] | None = None, before: Callable[[], None] | None = None) -> RunResult:
    """`check` each item (cheap: files exist, outputs may be written), then, when one passed, run `before` (what
    every item needs: loading models; its errors end the run) and `make` those that passed, in order.
    A2PError in `check` or `make` fails one item and the run goes on; anything else (a bug, Ctrl-C) ends the run."""
    reporter = reporter or Reporter()
    n = len(items)
    failed: dict[int, Failure] = {}
    if check is not None:
        for k, item in enumerate(items):
            try:
                check(item)
            except A2PError as exc:
                reporter.item(item.name, k + 1, n, input_names(item.inputs))
                reporter.item_error(exc.one_line(), exc.exit_code)
                failed[k] = Failure(item.inputs, item.output, exc, item.key)
    made: dict[int, object] = {}
    if before is not None and len(failed) < n:
        before()
    for k, item in enumerate(items):
        if k in failed:
            continue
        reporter.item(item.name, k + 1, n, input_names(item.inputs))
        try:
            made[k] = make(item)
        except A2PError as exc:
            reporter.item_error(exc.one_line(), exc.exit_code)
            failed[k] = Failure(item.inputs, item.output, exc, item.key)
            continue
        reporter.item_done(made[k].to_json())
    return RunResult([made[k] for k in sorted(made)], [failed[k] for k in sorted(failed)])
