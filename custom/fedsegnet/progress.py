"""Whether a long loop (training steps, evaluated cases) shows a tqdm progress bar."""

from __future__ import annotations

import sys

from fedsegnet.errors import ConfigError

__all__ = ["show_progress"]


def show_progress(progress: bool | str | None) -> bool:
    """Decide from a ``progress`` setting whether to show a progress bar.

    Args:
        progress: ``True`` shows a bar only when stderr is a terminal, ``"force"`` always,
            ``False`` or None never.

    Returns:
        True when a bar is to be shown.

    Raises:
        ConfigError: naming ``progress`` when it is none of the above.
    """
    if progress == "force":
        return True
    if progress in (False, None):
        return False
    if progress is True:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    raise ConfigError("progress", progress, "must be a bool or 'force'", options=(False, True, "force"))
