"""Exceptions that carry the process exit code of docs/CONTRACT.md, so only cli.py maps them to exits."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_TEMPFAIL = 75


class AgentError(Exception):
    """An error the user should see as one line; `exit_code` is what the process returns.

    `details` is what `--json` prints for it (e.g. the problems `check` found)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class ConfigError(AgentError):
    """Bad config file, CLI argument or setting: exit 2, nothing touched."""

    exit_code = EXIT_USAGE


class JobFailed(AgentError):
    """The job could not complete; nothing half-done is visible."""

    exit_code = EXIT_FAILED


class Locked(AgentError):
    """Another run holds the job's lock: try again later."""

    exit_code = EXIT_TEMPFAIL


class NotReady(AgentError):
    """A restore needs archived objects that are not readable yet (Glacier)."""

    exit_code = EXIT_TEMPFAIL


class IntegrityError(AgentError):
    """`check` found missing or corrupt data."""

    exit_code = EXIT_FAILED


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP stopped a run: it unwinds like Ctrl-C (a BaseException, so no
    `except Exception` swallows it), and the process exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
