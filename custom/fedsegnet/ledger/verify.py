"""Verify a ledger folder from its files alone: what ``fedsegnet ledger verify`` runs.

:func:`verify` reads ``entries.jsonl`` and ``heads.jsonl`` without trusting anything the server
computed, and checks

- every entry: canonical bytes, the fields of its kind, ``index`` = its line, round numbers that
  go up, each round's ``global_before`` = the previous round's ``global_after``;
- every tree head: its root = the RFC 9162 root recomputed from the first ``size`` entries, an
  RFC 9162 consistency proof from the previous head, its signature with the signer's certificate
  (from ``certs``, else the one stored in the ledger) under ``root_ca`` when given, no second head
  of the same size with another root (a fork), and that every entry is covered by a signed head;
- every witness record in the round entries: a head of the ledger (size and root), signed by the
  site with its certificate; every accepted site of a round carries one once a head existed;
- a resume entry: the head it carries is the root of the entries before it, validly signed;
- given model files: their sha256 equals the last job_end entry's (a resumed ledger also holds the
  interrupted job's).

Problems are attached to the entry they concern: a head's problem to the entries it added since
the previous good head, so :attr:`VerifyResult.first_fault` names the first round at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedsegnet.ledger.canonical import parse_canonical, sha256_file
from fedsegnet.ledger.entries import check_entry, entry_label
from fedsegnet.ledger.errors import LedgerError, ProofError, SignatureError
from fedsegnet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency
from fedsegnet.ledger.signing import (
    KEY_SOURCE_GENERATED,
    certs_from_kits,
    load_certificate,
    root_ca_from_kits,
    verify_head,
)
from fedsegnet.ledger.store import CERTS, ENTRIES, HEADS, read_lines
from fedsegnet.ledger.witness import verify_witness

__all__ = ["EntryCheck", "VerifyResult", "verify"]


@dataclass
class EntryCheck:
    """The result for one entry (one line of ``fedsegnet ledger verify``).

    Attributes:
        index: the entry's index (line - 1), ``-1`` for problems of the ledger as a whole.
        label: ``"round 3"``, ``"job_start"``...
        round: the round number for round entries, else ``None``.
        problems: what is wrong, empty when it verifies.
        signed_by: who signed the first head covering it (``"localhost (kit)"``).
        witnessed_by: the sites whose witness records this entry carries and that verify.
    """

    index: int
    label: str
    round: int | None = None
    problems: list[str] = field(default_factory=list)
    signed_by: str | None = None
    witnessed_by: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One line: ``round 3     OK    head 5 signed by localhost (kit); witnessed by site-1, site-2``."""
        if self.problems:
            return f"{self.label:<10} FAIL  " + "; ".join(self.problems)
        parts = [f"signed by {self.signed_by}" if self.signed_by else "not signed"]
        if self.witnessed_by:
            parts.append("witnessed by " + ", ".join(self.witnessed_by))
        return f"{self.label:<10} OK    " + "; ".join(parts)


@dataclass
class VerifyResult:
    """What :func:`verify` found.

    Attributes:
        folder: the ledger folder.
        checks: one :class:`EntryCheck` per entry, plus one with index -1 first when the ledger
            as a whole has problems (an unreadable or torn file).
        heads: the number of tree heads read.
        notes: facts that are not faults but limit what was proven (a generated key, no root CA).
    """

    folder: Path
    checks: list[EntryCheck]
    heads: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def first_fault(self) -> EntryCheck | None:
        """The first entry at fault (in ledger order), ``None`` when everything verifies."""
        return next((c for c in self.checks if not c.ok), None)

    @property
    def exit_code(self) -> int:
        """0 when it verifies, 1 otherwise (what a CLI exits with)."""
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        """One line per entry, then the notes and a summary naming the first entry at fault."""
        out = [c.line() for c in self.checks]
        out += [f"note: {n}" for n in self.notes]
        fault = self.first_fault
        if fault is None:
            out.append(f"ledger {self.folder}: {len(self.checks)} entries, {self.heads} heads: verified")
        else:
            out.append(f"ledger {self.folder}: FAILED, first at fault: {fault.label} ({fault.problems[0]})")
        return out


def _cert_lookup(certs, folder: Path):
    if certs is None:
        return {}
    if isinstance(certs, Mapping):
        return {name: load_certificate(c) for name, c in certs.items()}
    return certs_from_kits(certs)


def verify(folder, root_ca=None, certs=None, models: Mapping[str, str] | None = None, require_witnesses: bool = True) -> VerifyResult:
    """Verify a ledger folder (see the module docstring for what is checked).

    Args:
        folder: the ledger folder.
        root_ca: the project's ``rootCA.pem`` (path, PEM or loaded). Defaults to ``None``: taken
            from ``certs`` when that is a kits folder, else certificates are not checked against a
            root CA (noted in the result).
        certs: the participants' certificates: a folder of startup kits
            (``*/startup/{server,client}.crt``) or ``{name: certificate}``. Defaults to ``None``:
            the certificates stored in the ledger are used (noted in the result).
        models: model files to check against the last job_end entry, ``{"final": path, "best": path}``.
            Defaults to none.
        require_witnesses: every accepted site of a round must carry a witness record once a head
            was signed before the round. Defaults to ``True``.

    Returns:
        A :class:`VerifyResult`; it never raises for a bad ledger, it reports.

    Raises:
        LedgerError: only for bad arguments (a ``certs`` folder without kits, an unreadable root CA).
    """
    folder = Path(folder)
    known = _cert_lookup(certs, folder)
    if root_ca is None and certs is not None and not isinstance(certs, Mapping):
        try:
            root_ca = root_ca_from_kits(certs)
        except SignatureError:
            root_ca = None
    root = None if root_ca is None else load_certificate(root_ca)
    notes: list[str] = []
    if root is None:
        notes.append("certificates were not checked against a root CA (no --kits / root_ca given)")
    if not known:
        notes.append("signatures were checked against the certificates stored in the ledger, not the kits'")

    general = EntryCheck(-1, "ledger")
    try:
        lines = read_lines(folder / ENTRIES)
    except LedgerError as exc:
        general.problems.append(str(exc))
        lines = []
    try:
        head_lines = read_lines(folder / HEADS)
    except LedgerError as exc:
        general.problems.append(str(exc))
        head_lines = []
    if not (folder / ENTRIES).exists():
        general.problems.append(f"{folder / ENTRIES}: missing")

    entries: list[dict] = []
    checks: list[EntryCheck] = []
    for i, line in enumerate(lines):
        where = f"{ENTRIES} line {i + 1}"
        try:
            entry = check_entry(parse_canonical(line, where), where)
        except LedgerError as exc:
            entry = {}
            try:
                entry = json.loads(line)
            except ValueError:
                pass
            check = EntryCheck(i, entry_label(entry) if isinstance(entry, dict) and entry else f"entry {i}")
            check.problems.append(str(exc))
            checks.append(check)
            entries.append(entry if isinstance(entry, dict) else {})
            continue
        check = EntryCheck(i, entry_label(entry), entry.get("round") if entry["kind"] == "round" else None)
        if entry.get("index") != i:
            check.problems.append(
                f"{where} says index {entry.get('index')!r}: an entry was removed, inserted or moved here"
            )
        entries.append(entry)
        checks.append(check)
    tree = MerkleTree([leaf_hash(line) for line in lines])
    n = len(lines)

    def cert_for(name: str, sha: str, where: str):
        if name in known:
            return known[name]
        try:
            return load_certificate(folder / CERTS / f"{sha}.pem")
        except SignatureError:
            raise SignatureError(f"{where}: no certificate for {name!r} (not in the kits, not in {CERTS}/)") from None

    def blame(start: int, end: int, problem: str) -> None:
        """Attach a problem to the entries [start, end) a head added (the first of them), or the ledger."""
        target = checks[start] if 0 <= start < len(checks) and start < end else (checks[-1] if checks else general)
        target.problems.append(problem)

    # ---- heads -----------------------------------------------------------------------------
    heads: list[dict] = []
    roots_by_size: dict[int, str] = {}
    good_size, good_root = 0, None
    generated = set()
    for j, raw in enumerate(head_lines):
        where = f"{HEADS} line {j + 1}"
        try:
            head = parse_canonical(raw, where)
            size, hroot = int(head["size"]), str(head["root"])
        except (LedgerError, KeyError, TypeError, ValueError) as exc:
            general.problems.append(f"{where}: unreadable head ({exc})")
            continue
        heads.append(head)
        at = f"head of size {size} ({where})"
        if size in roots_by_size and roots_by_size[size] != hroot:
            blame(size - 1, size, f"{at}: a second head for size {size} with another root (a fork)")
            continue
        roots_by_size[size] = hroot
        if size < good_size:
            blame(size - 1, size, f"{at}: comes after a head of size {good_size} (the log went back)")
            continue
        if size > n:
            blame(n - 1 if n else -1, n, f"{at}: the ledger has only {n} entries (entries were removed)")
            continue
        ok = True
        if size == 0 or tree.root(size).hex() != hroot:
            blame(good_size, size, f"{at}: the signed root is not the root of entries 0..{size - 1} (an entry in this range was changed, removed or moved)")
            ok = False
        try:
            cert = cert_for(head.get("signer"), head.get("cert_sha256"), at)
            verify_head(head, cert, root, where=at)
        except (SignatureError, LedgerError) as exc:
            blame(good_size, size, str(exc))
            ok = False
        if ok and good_root is not None:
            try:
                verify_consistency(good_size, size, good_root, bytes.fromhex(hroot), tree.consistency_proof(good_size, size))
            except ProofError as exc:
                blame(good_size, size, f"{at}: {exc}")
                ok = False
        if ok:
            signer = f"{head['signer']} ({head.get('key_source')})"
            for k in range(good_size, size):
                checks[k].signed_by = signer
            if head.get("key_source") == KEY_SOURCE_GENERATED:
                generated.add(head["signer"])
            good_size, good_root = size, bytes.fromhex(hroot)
    for k in range(good_size, n):
        if checks[k].signed_by is None and not checks[k].problems:
            checks[k].problems.append("not covered by any valid signed tree head")

    # ---- entries ---------------------------------------------------------------------------
    last_round, last_after = None, None
    last_end = max((i for i, e in enumerate(entries) if e.get("kind") == "job_end"), default=None)
    for i, entry in enumerate(entries):
        check = checks[i]
        kind = entry.get("kind")
        if kind == "round":
            r = entry.get("round")
            if last_round is not None and isinstance(r, int) and r <= last_round:
                check.problems.append(f"round {r} comes after round {last_round}")
            if last_after is not None and entry.get("global_before") != last_after:
                check.problems.append(
                    f"global_before {str(entry.get('global_before'))[:16]}... is not round {last_round}'s "
                    f"global_after {last_after[:16]}..."
                )
            last_round, last_after = r, entry.get("global_after")
            witnesses = entry.get("witnesses") or {}
            head_before = any(0 < int(h.get("size", 0)) <= i for h in heads)
            if require_witnesses and head_before:
                for site in sorted(entry.get("sites") or {}):
                    if site not in witnesses:
                        check.problems.append(f"accepted site {site!r} carries no witness signature of the ledger head")
            for site, rec in sorted(witnesses.items()):
                where = f"round {r}: {site}'s witness"
                try:
                    size = int(rec.get("size"))
                    if not 0 < size <= i:
                        raise SignatureError(f"{where}: of a head of size {size}, not a head before this entry")
                    if tree.root(size).hex() != rec.get("root"):
                        raise SignatureError(f"{where}: of a root for size {size} that is not the ledger's (a fork shown to {site!r})")
                    verify_witness(rec, cert_for(site, rec.get("cert_sha256"), where), root, where=where)
                except (SignatureError, LedgerError, TypeError, ValueError) as exc:
                    check.problems.append(str(exc))
                    continue
                if rec.get("key_source") == KEY_SOURCE_GENERATED:
                    generated.add(site)
                check.witnessed_by.append(site)
        elif kind == "resume":
            start = entry.get("global_model")
            if start is not None and last_after is not None and start != last_after:
                notes.append(
                    f"resume (entry {i}): the resumed job started from global model {str(start)[:16]}..., not round "
                    f"{last_round}'s {last_after[:16]}...: the interrupted job ran a round it never recorded "
                    f"(rounds completed per its model: {entry.get('rounds_completed')})"
                )
            if start is not None:
                last_after = start
            prev = entry.get("previous_head") or {}
            at = f"resume: the previous head of size {prev.get('size')}"
            try:
                if prev.get("size") != i or tree.root(i).hex() != prev.get("root"):
                    raise SignatureError(f"{at} is not the root of the {i} entries before the resume entry")
                verify_head(prev, cert_for(prev.get("signer"), prev.get("cert_sha256"), at), root, where=at)
            except (SignatureError, LedgerError, TypeError) as exc:
                check.problems.append(str(exc))
        elif kind == "job_end" and i == last_end:  # a resumed ledger holds the interrupted job's job_end too
            for name, path in (models or {}).items():
                rec = (entry.get("models") or {}).get(name)
                if rec is None:
                    check.problems.append(f"the ledger records no {name!r} model")
                    continue
                try:
                    actual = sha256_file(path)
                except LedgerError as exc:
                    check.problems.append(str(exc))
                    continue
                if actual != rec.get("sha256"):
                    check.problems.append(
                        f"{path}: sha256 {actual[:16]}... is not the {name} model of round {rec.get('round')} "
                        f"the ledger records ({str(rec.get('sha256'))[:16]}...): the file was replaced"
                    )
    for name in sorted(generated):
        notes.append(f"{name} signed with a key generated for the run, not from a kit: this proves integrity, not identity")
    if models and not any(e.get("kind") == "job_end" for e in entries):
        general.problems.append("model files given but the ledger has no job_end entry recording them")
    all_checks = ([general] if general.problems else []) + checks
    return VerifyResult(folder, all_checks, len(heads), notes)
