"""Domain errors and the one exit-code enum.

Code inside termlm raises these; the CLI edge turns them into one line on
stderr and the matching exit code (see ``termlm.cli``).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    PARTIAL = 3  # some records failed (batch tasks)
    INTERRUPTED = 130


class TermlmError(Exception):
    """Base class: a user-facing problem, reported as one line."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(TermlmError):
    exit_code = ExitCode.USAGE


class ModelNotFound(TermlmError):
    """An alias or path that names no model."""


class ModelFileError(TermlmError):
    """A model file that is missing, truncated, or not GGUF."""


class ModelMissing(TermlmError):
    """A catalog model that is not pulled yet, and we may not pull it (offline)."""


class DownloadError(TermlmError):
    """Fetching or verifying a model failed."""


class TemplateError(TermlmError):
    """A prompt template that is malformed or misused."""


class ConfigError(TermlmError):
    """A config file that cannot be read or is invalid."""


class InputError(TermlmError):
    """Unreadable or undecodable user input."""


class ContextOverflow(TermlmError):
    """A prompt that cannot fit in the model's context window."""

    def __init__(self, n_tokens: int, n_ctx: int, what: str = "the prompt") -> None:
        super().__init__(
            f"{what} is {n_tokens} tokens, more than the context window of {n_ctx}",
            hint="shorten the input or raise --ctx",
        )
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx


class EngineError(TermlmError):
    """The inference engine failed."""
