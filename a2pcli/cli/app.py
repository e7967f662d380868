"""The `a2p` application: registers the commands and holds the one error boundary.

Exit codes (stable; README "Exit codes"): 0 ok, 1 failed, 2 bad usage or input,
3 environment cannot run the job, 4 model missing or corrupt, 5 not available yet, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator

import typer

from a2pcli import __version__
from a2pcli.cli.display import JsonSink, make_sink
from a2pcli.cli.options import ProgressMode
from a2pcli.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, A2PError

DEBUG_ENV = "A2P_DEBUG"

app = typer.Typer(
    name="a2p",
    help="Portrait + speech -> talking-head video. Progress goes to stderr, results and --json to stdout.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_active_sink = None  # the running command's progress sink, so the error boundary can report to it


def _version(value: bool) -> None:
    if value:
        typer.echo(f"a2p {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Portrait + speech -> talking-head video."""


@contextlib.contextmanager
def session(command: str, progress: ProgressMode, quiet: bool, describe=None, tag: dict | None = None) -> Iterator:
    """Progress display for one command run: yields the sink to hand to the library's Reporter. `describe`
    turns an item's result (its --json object) into the line printed when it finishes; `tag` ({"rank": r})
    marks the lines and events of one of several processes."""
    global _active_sink
    sink = make_sink(command, progress, quiet, describe, tag)
    _active_sink = sink
    sink.start()
    try:
        yield sink
    finally:
        sink.close()


def finish(sink, summary: dict, json_out: bool, human: str | None, quiet: bool) -> None:
    """Report a successful run: `done` event, the human summary on stderr, --json on stdout."""
    global _active_sink
    sink.done(summary)
    _active_sink = None
    if human and not quiet and not isinstance(sink, JsonSink):
        sys.stderr.write(human.rstrip("\n") + "\n")
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        sys.stdout.flush()


def finish_run(sink, run, json_out: bool) -> None:
    """The end of a run of items (pipeline RunResult): the `done` event (`error`, naming the first failure, when
    an item failed), `{"outputs": [...], "failed": [...]}` on stdout with --json, and the exit code: the first
    failure's, else 0. Each item's line was printed as it finished."""
    global _active_sink
    summary = run.to_json()
    _active_sink = None
    if run.failed:
        sink.failed(summary, run.failed[0].message, run.exit_code)
    else:
        sink.done(summary)
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        sys.stdout.flush()
    if run.failed:
        raise typer.Exit(run.exit_code)


def _register() -> None:
    from a2pcli.cli import cmd_batch, cmd_doctor, cmd_extract, cmd_models, cmd_render, cmd_train

    cmd_extract.register(app)
    cmd_render.register(app)
    cmd_batch.register(app)
    cmd_train.register(app)
    cmd_doctor.register(app)
    cmd_models.register(app)



def report_failure(sink, message: str, code: int) -> None:
    """One failed item of a batch: a JSON error event in --progress json, else an `error:` line."""
    if isinstance(sink, JsonSink):
        sink.error(message, code)
    else:
        sys.stderr.write(f"error: {message}\n")


def _report_error(message: str, code: int) -> None:
    global _active_sink
    sink, _active_sink = _active_sink, None
    if sink is not None:
        with contextlib.suppress(Exception):
            sink.close()
    report_failure(sink, message, code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: a KeyboardInterrupt, so every clean-up path of Ctrl-C runs."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during clean-up ends the process
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`, `timeout`) is handled like Ctrl-C while a command runs,
    unless it is ignored; the previous handler is back afterwards (`main` called in-process)."""
    installed = False
    with contextlib.suppress(ValueError, OSError):  # not the main thread, or no such signal
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            installed = True
    try:
        yield
    finally:
        if installed:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stopped_by_torchrun() -> bool:
    """A torchrun process other than its node's first: torchrun sends SIGTERM to it when another process
    failed (and said why) or when the whole run is stopped (and the node's first process says so), so it
    leaves without a line of its own."""
    rank, local_rank = os.environ.get("RANK", "").strip(), os.environ.get("LOCAL_RANK", "").strip()
    return "TORCHELASTIC_RUN_ID" in os.environ and rank not in ("", "0") and local_rank not in ("", "0")


def _invoke(argv: list[str] | None):
    """Run the command like `app(...)` but with every exception reaching `main`: typer's own main
    turns Ctrl-C into a silent exit 130 and usage errors into click's four-line form."""
    import typer.main

    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    with command.make_context("a2p", args) as ctx:
        return command.invoke(ctx)


def _usage_error(exc) -> str:
    """click's usage error as the one-line `error:` form: what is wrong, then where the help is."""
    import click

    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{message}. See `{ctx.command_path} --help`"
    return message


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `a2p` script and `python -m a2pcli`: maps every failure to one line."""
    import click

    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with _sigterm_as_interrupt():
            rv = _invoke(argv)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `a2p` or `a2p models`: the help
        exc.show()
        code = EXIT_BAD_INPUT
    except click.ClickException as exc:  # bad usage: one line, exit 2
        _report_error(_usage_error(exc), EXIT_BAD_INPUT)
        code = EXIT_BAD_INPUT
    except click.exceptions.Abort:  # end of input at a prompt
        _report_error("interrupted", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except Terminated:
        if not _stopped_by_torchrun():
            _report_error("terminated (SIGTERM); no partial output was kept", EXIT_TERMINATED)
        code = EXIT_TERMINATED
    except KeyboardInterrupt:
        _report_error("interrupted; no partial output was kept", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except A2PError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _report_error(exc.one_line(), exc.exit_code)
        code = exc.exit_code
    except Exception as exc:  # a bug or an unforeseen failure: one line, traceback only when debugging
        if debug:
            import traceback

            traceback.print_exc()
        _report_error(
            f"unexpected {type(exc).__name__}: {exc}. Run again with {DEBUG_ENV}=1 for the traceback "
            "and include `a2p doctor` output in a bug report",
            EXIT_FAILED,
        )
        code = EXIT_FAILED
    if argv is None:  # the `a2p` process itself (not main() called from Python)
        _leave_now(code)
    sys.exit(code)


def _leave_now(code: int) -> None:
    """End the process once the command is done, skipping the interpreter's teardown of every loaded module
    (torch's alone took 0.7 s on a 2-core machine, after the output was complete): exit handlers still run
    and the streams are flushed. Left to a normal exit when another thread is still running or a stream
    cannot be flushed."""
    import atexit
    import threading

    if threading.active_count() > 1:
        return
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - e.g. a closed pipe: the normal exit reports it as usual
        return
    os._exit(code)


_register()  # last: the command modules import the helpers above
