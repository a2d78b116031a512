"""The one exception hierarchy of hyperlex: every error a person can act on.

Each error carries a person-readable message, a short title and, where there is one, a hint that
says what to do. The CLI prints it on stderr and exits non-zero, the daemon turns it into an error
reply, and the console into a notification. Nothing here knows about any of those front ends.
"""

from __future__ import annotations


class HyperlexError(Exception):
    """Base of all errors hyperlex reports to a person.

    Args:
        message: what went wrong, naming the file, key or value concerned.
        hint: what the person can do about it, if anything.
        title: a short heading for notifications.
    """

    title = "hyperlex error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, title: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """The error as plain data, for JSON output and daemon replies."""
        return {"type": type(self).__name__, "title": self.title, "message": self.message,
                "hint": self.hint}


class ConfigError(HyperlexError):
    """A profile or setting is wrong. Carries every problem found, not just the first."""

    title = "configuration error"

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint)


class ModelNotFoundError(HyperlexError):
    """A base model, GGUF file or packaged model is not where the profile says."""

    title = "model not found"


class ModelFormatError(HyperlexError):
    """A model file exists but cannot be read: truncated, corrupt or of another kind."""

    title = "unreadable model"


class MissingDependencyError(HyperlexError):
    """An optional package is not installed; the message says which and how to get it."""

    title = "missing package"

    def __init__(self, package: str, purpose: str, *, install: str | None = None):
        install = install or f"pip install {package}   (or re-run ./install.sh)"
        super().__init__(f"{purpose} needs the Python package '{package}', which is not installed.",
                         hint=install)
        self.package = package


class DataError(HyperlexError):
    """Input data is malformed: a bad line, a span outside its document, an empty corpus."""

    title = "bad input data"


class NotAvailableError(HyperlexError):
    """A capability is not available in this build or on this machine."""

    title = "not available"


class DiskFullError(HyperlexError):
    """The file system under something hyperlex writes is full (or over its quota).

    A passing condition: the same request succeeds once space is freed, so the daemon answers it
    by name and carries on instead of reporting an internal error.
    """

    title = "disk full"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_disk_full(exc: BaseException) -> bool:
    import errno
    import sqlite3

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc)
    # Libraries with a native core (safetensors, tokenizers) raise their own errors carrying
    # the OS error's text: "No space left on device (os error 28)", "kind: StorageFull".
    text = str(exc)
    return any(sign in text for sign in ("No space left on device", "os error 28",
                                         "StorageFull", "Disk quota exceeded"))


def disk_full(exc: BaseException, where: object = None) -> DiskFullError | None:
    """`exc` as a DiskFullError when it, or what caused it, is a full disk: ENOSPC/EDQUOT,
    SQLite's "database or disk is full", or a native library's error naming os error 28.

    Args:
        exc: any exception.
        where: the directory whose file system filled (named in the message), if known.

    Returns:
        The DiskFullError to report, or None when `exc` is something else.
    """
    cause = next((e for e in _chain(exc) if _is_disk_full(e)), None)
    if cause is None:
        return None
    place = f" under {where}" if where is not None else ""
    return DiskFullError(f"the disk{place} is full ({cause})",
                         hint="free some space there, then try again")
