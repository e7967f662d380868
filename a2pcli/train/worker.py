"""One component of `a2p train all` (a2pcli.train.suite), trained in a process of its own.

    python -m a2pcli.train.worker '{"entry": "package.module:function", "options": {TrainOptions as JSON}}'

runs the trainer with its progress as JSON lines on stderr (the library's progress events, one a line; progress
at most PROGRESS_PER_S a second) and prints its result as the last line on stdout:
{"status": "ok", "summary": {...}} or {"status": "failed", "error": one line, "exit_code": n}; the exit code is
0 or n. The parent starts it with the device and the environment (CUDA_VISIBLE_DEVICES) of its slot.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from a2pcli.errors import EXIT_FAILED, EXIT_INTERRUPTED, A2PError
from a2pcli.train.core import TrainOptions

PROGRESS_PER_S = 4  # progress events sent a second, at most (a stage's last one always goes)


def options_to_json(opts: TrainOptions) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(map(str, v)) if isinstance(v, tuple) else v)
            for k, v in asdict(opts).items()}


def options_from_json(d: dict) -> TrainOptions:
    return TrainOptions(
        data=tuple(Path(p) for p in d["data"]), output=Path(d["output"]), preset=d["preset"], epochs=d["epochs"],
        batch_size=d["batch_size"], lr=d["lr"],
        val_speakers=None if d["val_speakers"] is None else tuple(d["val_speakers"]),
        resume=None if d["resume"] is None else Path(d["resume"]), seed=d["seed"], device=d["device"])


class _JsonLines:
    """Progress events as JSON lines on stderr, the progress ones thinned out."""

    def __init__(self):
        self.last = 0.0

    def __call__(self, ev: dict) -> None:
        if ev["event"] == "progress":
            now = time.monotonic()
            finished = ev.get("total") is not None and ev["done"] >= ev["total"]
            if not finished and now - self.last < 1 / PROGRESS_PER_S:
                return
            self.last = now
        sys.stderr.write(json.dumps(ev, default=str) + "\n")
        sys.stderr.flush()


def run(job: dict) -> tuple[dict, int]:
    """(result, exit code) of one component's training."""
    from a2pcli.progress import Reporter
    from a2pcli.train.components import load_entry

    try:
        summary = load_entry(job["entry"])(options_from_json(job["options"]), Reporter(_JsonLines()))
        return {"status": "ok", "summary": summary}, 0
    except A2PError as exc:
        return {"status": "failed", "error": exc.one_line(), "exit_code": exc.exit_code}, exc.exit_code
    except KeyboardInterrupt:
        return {"status": "failed", "error": "interrupted", "exit_code": EXIT_INTERRUPTED}, EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure of one component: reported, not raised
        if os.environ.get("A2P_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exc()
        return {"status": "failed", "error": f"unexpected {type(exc).__name__}: {exc}", "exit_code": EXIT_FAILED}, \
            EXIT_FAILED


def main(argv: list[str]) -> int:
    result, code = run(json.loads(argv[0]))
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
