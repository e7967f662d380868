"""Typed errors raised by the library. The CLI maps each class to one line and an exit code.

Every error carries the offending input (`subject`) and the fix (`remedy`) so that the CLI
can print `error: <subject>: <message>. <remedy>` without knowing the details.
"""

from __future__ import annotations

# Exit codes: stable, documented in the README ("Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed (unexpected error, a stage that could not complete)
EXIT_BAD_INPUT = 2  # bad usage or bad input file
EXIT_ENVIRONMENT = 3  # the machine cannot run the job (device, VRAM, ffmpeg, mediapipe)
EXIT_MODEL = 4  # a model is missing or corrupt
EXIT_NOT_AVAILABLE = 5  # the command exists but its work is not available in this version
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), handled like Ctrl-C


class A2PError(Exception):
    """Base class. `subject` names the input at fault, `remedy` says what to do."""

    exit_code = EXIT_FAILED
    label = "error"

    def __init__(self, message: str, *, subject: str | None = None, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.remedy = remedy

    def one_line(self) -> str:
        parts = []
        if self.subject:
            parts.append(f"{self.subject}: ")
        parts.append(self.message.rstrip("."))
        if self.remedy:
            remedy = self.remedy.rstrip(".")
            parts.append(f". {remedy[:1].upper()}{remedy[1:]}")
        return "".join(parts).replace("\n", " ")


class InputError(A2PError):
    """A user input (file, option value) cannot be used."""

    exit_code = EXIT_BAD_INPUT


class NoFaceError(InputError):
    """No usable face in an image or video."""


class OutputError(InputError):
    """The output cannot be written where asked (exists, unwritable, missing directory)."""


class EnvironmentProblem(A2PError):
    """The machine cannot run the job: device, driver, VRAM, ffmpeg, mediapipe."""

    exit_code = EXIT_ENVIRONMENT


class ModelError(A2PError):
    """A model is unknown, missing, or its files do not match their recorded hash."""

    exit_code = EXIT_MODEL


class NotAvailableError(A2PError):
    """The command exists but its work arrives in a later version."""

    exit_code = EXIT_NOT_AVAILABLE
