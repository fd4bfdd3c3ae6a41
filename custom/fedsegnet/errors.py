"""The FedSegNet error family: every message names the site, file or field at fault."""

from __future__ import annotations

import math
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


def check_int(field: str, value, low: int) -> int:
    """``value`` as an int when it is an integer (not a bool) >= ``low``, else :class:`ConfigError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(field, value, f"must be an integer >= {low}")
    return int(value)


def check_number(field: str, value, low: float, high: float = math.inf) -> float:
    """``value`` as a float when it is a finite number (not a bool) in ``[low, high)``, else
    :class:`ConfigError` naming ``field``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not low <= value < high:
        bound = f"in [{low}, {high})" if math.isfinite(high) else f">= {low}"
        raise ConfigError(field, value, f"must be a finite number {bound}")
    return float(value)


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


class UsageError(FedSegNetError):
    """Command-line flags that do not go together (or do not fit what they name); the message names the flags."""


class OutputError(FedSegNetError):
    """A destination is refused (it exists, is not the tool's own, or is an input) or cannot be written; names it."""


class RunError(FedSegNetError):
    """A run itself failed or timed out (the simulator, a POC system, a job); names its log."""


class PrivacyBudgetSpent(FedSegNetError):
    """A site's next round would pass its ``dp_budget``: it does not train. The message names the
    site, the epsilon spent and the would-be epsilon (:mod:`fedsegnet.privacy.site`)."""

    def __init__(self, site: str, reason: str):
        self.site = site
        self.reason = reason
        super().__init__(f"site {site!r}: {reason}")
