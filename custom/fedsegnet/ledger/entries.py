"""Ledger entries: one canonical JSON object per event that matters to the federation.

Every entry has ``kind`` (one of :data:`ENTRY_KINDS`), ``schema`` (:data:`SCHEMA`), ``time``
(ISO-8601 UTC) and, once appended, ``index`` (its 0-based leaf index, set by the ledger). The
constructors below check their arguments and return new dicts; ``docs/ledger.md`` lists every
field.

- ``job_start``: job id, sha256 of the job config, code version, participants, server name.
- ``round``: round number, global model hash before and after (:func:`~fedsegnet.ledger.canonical.hash_weights`),
  each accepted site's payload hash and update meta, AAM weight and signals, epsilon; refused
  sites with their payload hash and reason; aggregation settings, codec settings; the sites'
  witness signatures of the last tree head they were sent.
- ``resume``: the interrupted job's last signed tree head and the folder it came from.
- ``job_end``: last round, reason, sha256 of the final and best global model files.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping

from fedsegnet.ledger.canonical import canonical_value
from fedsegnet.ledger.errors import CanonicalError

__all__ = [
    "ENTRY_KINDS",
    "SCHEMA",
    "utc_now",
    "check_sha256",
    "job_start_entry",
    "round_entry",
    "resume_entry",
    "job_end_entry",
    "check_entry",
    "entry_label",
    "payload_of",
]

SCHEMA = 1
ENTRY_KINDS = ("job_start", "round", "resume", "job_end")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def utc_now() -> str:
    """The current time as ISO-8601 UTC with microseconds, e.g. ``2026-05-01T12:00:00.000001+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def check_sha256(field: str, value) -> str:
    """``value`` when it is 64 lowercase hex digits, else :class:`CanonicalError` naming ``field``."""
    if not isinstance(value, str) or not _HEX64.match(value):
        raise CanonicalError(field, f"{value!r} is not a sha256 hex digest (64 lowercase hex digits)")
    return value


def _check_name(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise CanonicalError(field, f"{value!r} must be a non-empty string")
    return value


def _check_round(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CanonicalError(field, f"{value!r} must be an integer >= 0")
    return value


def _base(kind: str, time: str | None) -> dict:
    return {"kind": kind, "schema": SCHEMA, "time": time or utc_now()}


def job_start_entry(
    *,
    job_id: str,
    job_config_sha256: str,
    code_version: str,
    participants: list[str],
    server: str,
    settings: Mapping | None = None,
    time: str | None = None,
) -> dict:
    """The first entry of a job.

    Args:
        job_id: FLARE's job id (or the simulator's job name).
        job_config_sha256: sha256 of the job's config (e.g. of its canonical job args).
        code_version: the fedsegnet version (and git commit when known).
        participants: the site names of the job.
        server: the server's name (the common name of its certificate in a provisioned project).
        settings: other job settings worth recording (plain JSON). Defaults to ``None`` (none).
        time: ISO-8601 UTC; defaults to now.

    Returns:
        A new entry dict (without ``index``).

    Raises:
        CanonicalError: naming the argument at fault.
    """
    entry = _base("job_start", time)
    entry.update(
        job_id=_check_name("job_id", job_id),
        job_config_sha256=check_sha256("job_config_sha256", job_config_sha256),
        code_version=_check_name("code_version", code_version),
        participants=sorted(_check_name(f"participants[{i}]", p) for i, p in enumerate(participants)),
        server=_check_name("server", server),
    )
    if settings is not None:
        entry["settings"] = canonical_value(settings, "settings")
    return canonical_value(entry)


def round_entry(
    round: int,
    *,
    global_before: str,
    global_after: str,
    sites: Mapping[str, Mapping],
    refused: Mapping[str, Mapping] | None = None,
    aggregation: Mapping | None = None,
    codec: Mapping | None = None,
    witnesses: Mapping[str, Mapping] | None = None,
    time: str | None = None,
) -> dict:
    """The entry of one server round.

    Args:
        round: the round number (>= 0).
        global_before: ``hash_weights`` of the global model the round started from.
        global_after: ``hash_weights`` of the global model after the round.
        sites: accepted sites, ``{site: {"payload_sha256": hex, "meta": {...}, "weight": w,
            "signals": {...}, "epsilon": e, "bytes_up": n}}``; only ``payload_sha256`` is required.
        refused: refused sites, ``{site: {"payload_sha256": hex or None, "reason": str}}``.
            Defaults to none.
        aggregation: aggregation settings and round-level signals. Defaults to none.
        codec: codec settings. Defaults to none.
        witnesses: the sites' witness records of the last head they were sent
            (:meth:`~fedsegnet.ledger.witness.SiteWitness.witness`). Defaults to none.
        time: ISO-8601 UTC; defaults to now.

    Returns:
        A new entry dict (without ``index``).

    Raises:
        CanonicalError: naming the field at fault (e.g. ``sites.site-2.weight`` for a NaN weight).
    """
    entry = _base("round", time)
    entry["round"] = _check_round("round", round)
    entry["global_before"] = check_sha256("global_before", global_before)
    entry["global_after"] = check_sha256("global_after", global_after)
    if not isinstance(sites, Mapping):
        raise CanonicalError("sites", "must be a dict {site: {payload_sha256: ...}}")
    for site, rec in sites.items():
        _check_name("sites", site)
        if not isinstance(rec, Mapping):
            raise CanonicalError(f"sites.{site}", "must be a dict with payload_sha256")
        check_sha256(f"sites.{site}.payload_sha256", rec.get("payload_sha256"))
    entry["sites"] = canonical_value(sites, "sites")
    refused = refused or {}
    for site, rec in refused.items():
        _check_name("refused", site)
        if not isinstance(rec, Mapping) or not isinstance(rec.get("reason"), str) or not rec["reason"]:
            raise CanonicalError(f"refused.{site}.reason", "a refused site needs a non-empty reason")
        if rec.get("payload_sha256") is not None:
            check_sha256(f"refused.{site}.payload_sha256", rec["payload_sha256"])
        if site in sites:
            raise CanonicalError(f"refused.{site}", "a site is either accepted or refused, not both")
    entry["refused"] = canonical_value(refused, "refused")
    entry["aggregation"] = canonical_value(aggregation or {}, "aggregation")
    entry["codec"] = canonical_value(codec or {}, "codec")
    witnesses = witnesses or {}
    for site, rec in witnesses.items():
        if not isinstance(rec, Mapping) or rec.get("site") != site:
            raise CanonicalError(f"witnesses.{site}", "a witness record must name the same site")
    entry["witnesses"] = canonical_value(witnesses, "witnesses")
    return canonical_value(entry)


def resume_entry(previous_head: Mapping, previous_folder: str, time: str | None = None) -> dict:
    """The entry that continues an interrupted job's ledger.

    Args:
        previous_head: the interrupted ledger's last signed tree head (a dict from ``heads.jsonl``).
        previous_folder: where that ledger was (recorded, not trusted).
        time: ISO-8601 UTC; defaults to now.

    Returns:
        A new entry dict (without ``index``).

    Raises:
        CanonicalError: naming the field at fault.
    """
    if not isinstance(previous_head, Mapping) or "size" not in previous_head or "root" not in previous_head:
        raise CanonicalError("previous_head", "must be a signed tree head with size and root")
    entry = _base("resume", time)
    entry["previous_head"] = canonical_value(previous_head, "previous_head")
    entry["previous_folder"] = str(previous_folder)
    return canonical_value(entry)


def job_end_entry(
    *, last_round: int | None, reason: str, models: Mapping[str, Mapping] | None = None, time: str | None = None
) -> dict:
    """The last entry of a job.

    Args:
        last_round: the last round run, ``None`` when none ran.
        reason: why the job ended (``"finished"``, ``"aborted"``, ``"all sites at their budget"``...).
        models: the saved global model files, ``{"final": {"file": name, "sha256": hex, "round": r},
            "best": {...}}``. Defaults to none.
        time: ISO-8601 UTC; defaults to now.

    Returns:
        A new entry dict (without ``index``).

    Raises:
        CanonicalError: naming the field at fault.
    """
    entry = _base("job_end", time)
    entry["last_round"] = None if last_round is None else _check_round("last_round", last_round)
    entry["reason"] = _check_name("reason", reason)
    models = models or {}
    for name, rec in models.items():
        if not isinstance(rec, Mapping):
            raise CanonicalError(f"models.{name}", "must be a dict with file and sha256")
        check_sha256(f"models.{name}.sha256", rec.get("sha256"))
        _check_name(f"models.{name}.file", rec.get("file"))
    entry["models"] = canonical_value(models, "models")
    return canonical_value(entry)


_REQUIRED = {
    "job_start": ("job_id", "job_config_sha256", "code_version", "participants", "server"),
    "round": ("round", "global_before", "global_after", "sites", "refused", "witnesses"),
    "resume": ("previous_head", "previous_folder"),
    "job_end": ("last_round", "reason", "models"),
}


def check_entry(entry, where: str) -> dict:
    """Check the fields an entry of its kind must have.

    Args:
        entry: a parsed entry.
        where: what to name in errors (e.g. ``"entries.jsonl line 3"``).

    Returns:
        ``entry``.

    Raises:
        CanonicalError: naming ``where`` and the missing or bad field.
    """
    if not isinstance(entry, dict):
        raise CanonicalError(where, "an entry must be a JSON object")
    kind = entry.get("kind")
    if kind not in ENTRY_KINDS:
        raise CanonicalError(f"{where}: kind", f"{kind!r} is not one of {', '.join(ENTRY_KINDS)}")
    if entry.get("schema") != SCHEMA:
        raise CanonicalError(f"{where}: schema", f"{entry.get('schema')!r}: this version reads schema {SCHEMA}")
    missing = [f for f in _REQUIRED[kind] if f not in entry]
    if missing:
        raise CanonicalError(f"{where}", f"a {kind} entry lacks {', '.join(missing)}")
    return entry


def entry_label(entry: Mapping) -> str:
    """How a CLI names an entry: ``"round 3"``, ``"job_start"``, ``"resume"``, ``"job_end"``."""
    if entry.get("kind") == "round":
        return f"round {entry.get('round')}"
    return str(entry.get("kind"))


def payload_of(entry: Mapping, site: str) -> str | None:
    """The payload hash ``site`` has in a round entry (accepted or refused), else ``None``."""
    if entry.get("kind") != "round":
        return None
    for group in ("sites", "refused"):
        rec = (entry.get(group) or {}).get(site)
        if isinstance(rec, Mapping) and rec.get("payload_sha256"):
            return rec["payload_sha256"]
    return None
