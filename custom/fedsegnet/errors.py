"""The FedSegNet error family: every message names the site, file or field at fault."""

from __future__ import annotations

from collections.abc import Iterable


class FedSegNetError(Exception):
    """Base class of every error FedSegNet raises on purpose."""


class ConfigError(FedSegNetError, ValueError):
    """A setting (job arg, CLI flag, constructor argument) is invalid.

    Args:
        field: name of the setting at fault.
        value: the bad value.
        problem: what is wrong, e.g. ``"must be > 0"``.
        options: valid choices, when there is a finite set.
    """

    def __init__(self, field: str, value, problem: str, options: Iterable | None = None):
        self.field = field
        self.value = value
        msg = f"{field}={value!r}: {problem}"
        if options is not None:
            msg += f" (valid: {', '.join(map(str, options))})"
        super().__init__(msg)


class DataError(FedSegNetError):
    """A site's data failed a check; lists every problem found, each naming its file.

    Args:
        site: the site name (or dataset folder) whose data is at fault.
        problems: one line per problem, each naming the file and what is wrong.
    """

    def __init__(self, site: str, problems: list[str]):
        self.site = site
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"site {site!r}: {len(self.problems)} data problem(s):\n{lines}")
