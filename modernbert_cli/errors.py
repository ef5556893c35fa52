"""Exit codes and the errors that map to them.

Every failure the user can cause is a :class:`CliError` with a one-line message;
``cli.run`` prints it on stderr and exits with its :class:`ExitStatus`. Anything else
is a bug and is reported as one (the traceback only with ``--debug``).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    ERROR = 1  # an unexpected internal error (a bug)
    USAGE = 2  # bad option or argument (the same code click uses)
    INPUT = 3  # unreadable, missing, malformed or empty input
    MODEL = 4  # the model could not be loaded
    OUTPUT = 5  # the output file could not be written
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    BROKEN_PIPE = 141  # stdout closed early, e.g. `| head -1` (128 + SIGPIPE)


class CliError(Exception):
    """A failure the user can fix; ``str(error)`` is the one-line message."""

    status = ExitStatus.ERROR


class StdoutClosed(CliError):
    """The reader of stdout went away (``| head -1``): stop quietly."""

    status = ExitStatus.BROKEN_PIPE


class UsageError(CliError):
    """An option or argument that makes no sense, e.g. ``--format npy`` without ``-o``."""

    status = ExitStatus.USAGE


class SettingError(UsageError):
    """A setting or keyword whose value cannot work, in the library's own terms.

    ``setting`` is the keyword's name (``device``, ``truncate_dim``); the command line
    words it with the option's flag instead (``--device cuda: …``). Other settings the
    reason mentions are written ``{name}``, so each side can word them its way.

    >>> str(SettingError("device", "no CUDA GPU is available here (try {device}=cpu)", "cuda"))
    "device='cuda': no CUDA GPU is available here (try device=cpu)"
    """

    _UNSET = object()

    def __init__(self, setting: str, reason: str, value: object = _UNSET) -> None:
        self.setting, self.template, self.value = setting, reason, value
        shown = "" if value is self._UNSET else f"={value!r}"
        super().__init__(f"{setting}{shown}: {self.reason}")

    @property
    def reason(self) -> str:
        """The reason, other settings named by their keywords."""
        return self.worded(lambda name: name)

    def worded(self, name_of: Callable[[str], str]) -> str:
        """The reason with each ``{setting}`` it mentions named by ``name_of(setting)``."""

        class Names(dict):
            def __missing__(self, key: str) -> str:
                return name_of(key)

        return self.template.format_map(Names())

    @property
    def has_value(self) -> bool:
        return self.value is not self._UNSET


class InputError(CliError):
    """Input that cannot be read: names the file (and line) at fault."""

    status = ExitStatus.INPUT


class ModelError(CliError):
    """A model that cannot be loaded: names the model and the remedies."""

    status = ExitStatus.MODEL


class OutputError(CliError):
    """An output file that cannot be written."""

    status = ExitStatus.OUTPUT
