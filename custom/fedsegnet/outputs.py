"""Destinations: no command deletes or overwrites what it did not create.

Every command that writes claims its destination first, through :func:`claim_dir` (a folder) or
:func:`claim_file` (one file):

- a destination that does not exist is created; a folder gets a marker file
  ``.fedsegnet-output.json`` naming the command that made it (:data:`MARKER`);
- an existing empty folder is taken (there is nothing in it to lose) and marked;
- anything else that exists is refused with an :class:`~fedsegnet.errors.OutputError` naming it,
  unless ``overwrite`` is given; even then only a folder carrying the marker of the same command
  (a file: one that ``owned(path)`` recognises as the tool's own) is replaced, and a folder whose
  command finished (:func:`seal_dir` listed its files in the marker) only while it holds nothing
  else: a file added to it later keeps it from being replaced;
- protected paths (a command's source job, its input scans, their folders) are never written: the
  destination may not be one of them or a folder above one, with or without ``overwrite``; for a
  copy (``inside_ok=False``) it may not lie inside one either.

Library functions that delete (copying a job folder, preparing a POC workspace, starting the
simulator in a workspace) claim their destination themselves; the CLI claims the destinations of
the commands that only add files (``data synth``, ``data split``, ``report``, ``infer``, ``demo``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from fedsegnet.errors import OutputError

MARKER = ".fedsegnet-output.json"
_ADVICE = "choose a new destination, or give --overwrite to replace an output fedsegnet wrote"


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def read_marker(folder: str | Path, marker_dir: str | None = None) -> dict | None:
    """The marker of a folder a command made, or None when it has none (or an unreadable one).

    Args:
        folder: the folder.
        marker_dir: subfolder holding the marker (relative to ``folder``). Defaults to None (the folder itself).
    """
    path = Path(folder) / (marker_dir or "") / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("command"), str) else None


def write_marker(folder: str | Path, command: str, marker_dir: str | None = None) -> Path:
    """Write the marker that says ``command`` made ``folder``; returns the marker's path."""
    path = Path(folder) / (marker_dir or "") / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return path


def _files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths, sorted), the marker excluded."""
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MARKER
    )


_CLAIMED: list[tuple[Path, str | None, bool]] = []  # (folder, marker_dir, created) claimed in this process, not sealed yet


def forget_claims() -> None:
    """Forget the folders claimed so far in this process without sealing them."""
    _CLAIMED.clear()


def seal_claimed() -> list[Path]:
    """:func:`seal_dir` every folder claimed in this process since the last call (the CLI calls it
    when a command succeeded; a command that failed leaves its folders unsealed, replaceable whole).

    Returns:
        the folders sealed.
    """
    done = []
    while _CLAIMED:
        folder, marker_dir, _ = _CLAIMED.pop(0)
        if read_marker(folder, marker_dir) is not None:
            seal_dir(folder, marker_dir)
            done.append(folder)
    return done


def release_claims() -> list[Path]:
    """Undo the claims of a command that failed before it wrote anything: the marker of a folder
    that holds nothing else is removed, and the folder too when the claim created it (the CLI
    calls it on an error).

    Returns:
        the folders removed.
    """
    removed = []
    while _CLAIMED:
        folder, marker_dir, created = _CLAIMED.pop()
        marker = folder / (marker_dir or "") / MARKER
        if folder.is_dir() and not _files_in(folder) and marker.is_file():
            marker.unlink()
            if created:  # an existing (empty) folder was the user's: it stays
                for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
                    sub.rmdir()
                folder.rmdir()
                removed.append(folder)
    return removed


def seal_dir(folder: str | Path, marker_dir: str | None = None) -> Path:
    """Record in the marker of ``folder`` every file it holds now (call when the command is done).

    ``--overwrite`` then replaces the folder only while it holds nothing but those files: a file
    put into it later (by the user, or another program) keeps the whole folder from being replaced.

    Returns:
        the marker's path.
    """
    folder = Path(folder)
    path = folder / (marker_dir or "") / MARKER
    marker = read_marker(folder, marker_dir) or {"command": "?", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    marker["files"] = _files_in(folder)
    path.write_text(json.dumps(marker) + "\n")
    return path


def check_protected(dest: str | Path, protect: Iterable[str | Path], flag: str = "--out", inside_ok: bool = True) -> None:
    """Refuse a destination that is a protected path or a folder above one.

    Args:
        dest: the destination.
        protect: paths that must never be written (sources, input scans).
        flag: the argument that named ``dest``, for the message. Defaults to ``"--out"``.
        inside_ok: whether ``dest`` may lie inside a protected folder. Defaults to True.

    Raises:
        OutputError: naming ``dest`` and the protected path.
    """
    d = _resolved(dest)
    for p in protect:
        s = _resolved(p)
        if d == s:
            raise OutputError(f"{flag} {dest}: is the input {p}; it is never written, choose another destination")
        if d in s.parents:
            raise OutputError(f"{flag} {dest}: holds the input {p}; it is never written, choose a folder outside it")
        if not inside_ok and s in d.parents:
            raise OutputError(f"{flag} {dest}: lies inside the input {p}; choose a folder outside it")


def claim_dir(
    dest: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    protect: Iterable[str | Path] = (),
    flag: str = "--out",
    inside_ok: bool = True,
    keep: Iterable[str] = (),
    marker_dir: str | None = None,
) -> Path:
    """Make ``dest`` a folder ``command`` may write into, or refuse.

    Args:
        dest: the destination folder.
        command: the command that writes it, e.g. ``"job set"`` (recorded in the marker).
        overwrite: replace ``dest`` when it holds the marker of ``command``. Defaults to False.
        protect: paths never written (see :func:`check_protected`). Defaults to ().
        flag: the argument that named ``dest``, for messages. Defaults to ``"--out"``.
        inside_ok: whether ``dest`` may lie inside a protected folder. Defaults to True.
        keep: names of entries an existing folder may hold and still count as empty (e.g. the
            ``local`` folder the simulator keeps). Defaults to ().
        marker_dir: subfolder of ``dest`` that holds the marker. Defaults to None (``dest`` itself).

    Returns:
        ``dest`` as a Path; it exists and holds the marker.

    Raises:
        OutputError: ``dest`` is protected, is not a folder, or holds files and ``overwrite`` is
            not given or it was not written by ``command``; names ``dest``.
    """
    check_protected(dest, protect, flag, inside_ok)
    path = Path(dest)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{flag} {dest}: exists and is not a folder; it is left alone")
        marker = read_marker(path, marker_dir)
        extra = sorted(e.name for e in path.iterdir() if e.name not in set(keep) | {MARKER})
        if extra or marker is not None:
            if not overwrite:
                raise OutputError(f"{flag} {dest}: exists and is not empty; {_ADVICE}")
            if marker is None:
                raise OutputError(
                    f"{flag} {dest}: exists and was not written by fedsegnet (no {MARKER}); it is left alone, even with --overwrite"
                )
            if marker["command"] != command:
                raise OutputError(
                    f"{flag} {dest}: was written by `fedsegnet {marker['command']}`, not `fedsegnet {command}`; it is left alone"
                )
            if isinstance(marker.get("files"), list):
                foreign = sorted(set(_files_in(path)) - set(marker["files"]))
                if foreign:
                    raise OutputError(
                        f"{flag} {dest}: holds {len(foreign)} file(s) `fedsegnet {command}` did not write "
                        f"(first: {foreign[0]}); it is left alone, even with --overwrite: move them out first"
                    )
            shutil.rmtree(_resolved(path))
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, command, marker_dir)
        _CLAIMED.append((path, marker_dir, not existed))
    except OSError as e:
        raise OutputError(f"{flag} {dest}: cannot be created ({e.strerror or e})") from None
    return path


def claim_file(
    dest: str | Path,
    *,
    overwrite: bool = False,
    owned: Callable[[Path], bool] | None = None,
    protect: Iterable[str | Path] = (),
    flag: str = "--out",
) -> Path:
    """Make ``dest`` a file path a command may write, or refuse; creates its folder.

    Args:
        dest: the destination file.
        overwrite: replace ``dest`` when ``owned(dest)`` says the tool wrote it. Defaults to False.
        owned: recognises a file the tool wrote. Defaults to None (no existing file is replaced).
        protect: paths never written (see :func:`check_protected`). Defaults to ().
        flag: the argument that named ``dest``, for messages. Defaults to ``"--out"``.

    Returns:
        ``dest`` as a Path (not yet written; its folder exists and is writable).

    Raises:
        OutputError: ``dest`` is protected, exists (without ``overwrite``, or not the tool's own),
            is a folder, or its folder cannot be created or written; names ``dest``.
    """
    check_protected(dest, protect, flag)
    path = Path(dest)
    if path.is_dir():
        raise OutputError(f"{flag} {dest}: is a folder; give a file name")
    if path.exists():
        if not overwrite:
            raise OutputError(f"{flag} {dest}: exists; {_ADVICE}")
        if owned is None or not owned(path):
            raise OutputError(f"{flag} {dest}: exists and was not written by fedsegnet; it is left alone, even with --overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {dest}: its folder cannot be created ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{flag} {dest}: its folder {path.parent} is not writable")
    return path
