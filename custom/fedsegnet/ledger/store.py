"""The ledger on disk: a folder of append-only JSON-lines files and the Merkle tree over them.

Layout (``<server job workspace>/fedsegnet_ledger/`` in a job)::

    LEDGER.json      {"format": "fedsegnet-ledger", "version": 1, "log_id": ..., "created": ...}
    entries.jsonl    one canonical entry per line; line i is leaf i of the tree
    heads.jsonl      one signed tree head per line
    certs/<sha256>.pem   every certificate a head or a witness was signed with, once

Every write appends one whole line with a single ``write`` on a file opened with ``O_APPEND``,
then ``fsync``. A line cut by a crash is found when the ledger is opened again
(:class:`~fedsegnet.ledger.errors.TornLineError` names the file, the line and the byte offset) and
nothing is changed: the ledger never drops, truncates or overwrites a line, and never writes into
a folder that holds files it did not create.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsegnet.ledger.canonical import canonical_bytes, parse_canonical
from fedsegnet.ledger.entries import check_entry, entry_label, payload_of, resume_entry, utc_now
from fedsegnet.ledger.errors import LedgerError, TornLineError
from fedsegnet.ledger.merkle import MerkleTree, leaf_hash
from fedsegnet.ledger.signing import Signer, cert_pem, cert_sha256, load_certificate, sign_head

logger = logging.getLogger(__name__)

__all__ = ["Ledger", "LEDGER_FOLDER", "read_lines", "append_line"]

LEDGER_FOLDER = "fedsegnet_ledger"
"""The ledger's folder name inside a server job workspace."""
MARKER, ENTRIES, HEADS, CERTS = "LEDGER.json", "entries.jsonl", "heads.jsonl", "certs"
FORMAT = "fedsegnet-ledger"


def read_lines(path: Path) -> list[bytes]:
    """The lines of a JSON-lines file, without newlines; ``[]`` when it does not exist.

    Raises:
        TornLineError: when the last line has no newline (an interrupted write).
        LedgerError: naming the file and line of an empty line.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LedgerError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] != b"":
        offset = len(data) - len(lines[-1])
        raise TornLineError(path, len(lines), offset)
    lines = lines[:-1]
    for i, line in enumerate(lines):
        if not line:
            raise LedgerError(f"{path}: line {i + 1} is empty; a ledger file has one JSON object per line")
    return lines


def append_line(path: Path, data: bytes) -> None:
    """Append ``data + b"\\n"`` to ``path`` in one write on an ``O_APPEND`` descriptor, then fsync."""
    if b"\n" in data:
        raise LedgerError(f"{path}: a ledger line cannot contain a newline")
    line = data + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        while written < len(line):  # a short write (rare): finish the same line
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    """An append-only ledger in a folder: entries, the Merkle tree over them, signed tree heads.

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; the constructor is not public.

    Attributes:
        folder: the ledger folder.
        log_id: the ledger's id (the job id of the job that created it).
    """

    def __init__(self, folder: Path, log_id: str, lines: list[bytes], heads: list[dict]):
        self.folder = Path(folder)
        self.log_id = log_id
        self._lines = list(lines)
        self._entries = [parse_canonical(line, f"{self.folder / ENTRIES} line {i + 1}") for i, line in enumerate(lines)]
        for i, entry in enumerate(self._entries):
            check_entry(entry, f"{self.folder / ENTRIES} line {i + 1}")
            if entry.get("index") != i:
                raise LedgerError(
                    f"{self.folder / ENTRIES} line {i + 1}: the entry says index {entry.get('index')!r}, "
                    f"expected {i} (an entry was removed, inserted or moved)"
                )
        self.tree = MerkleTree([leaf_hash(line) for line in lines])
        self._heads = list(heads)
        for i, head in enumerate(self._heads):
            where = f"{self.folder / HEADS} line {i + 1}"
            size = head.get("size")
            if not isinstance(size, int) or not 0 <= size <= len(self.tree):
                raise LedgerError(f"{where}: a head of size {size!r} but the ledger has {len(self.tree)} entries")
            if head.get("root") != self.tree.root(size).hex():
                raise LedgerError(
                    f"{where}: the signed root of size {size} is not the root of the entries "
                    f"({self._label_at(size)}): the entries were changed after signing; run verify"
                )

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, folder, log_id: str, resume_from=None, resume_fields: Mapping | None = None) -> "Ledger":
        """Start a new ledger in ``folder`` (created; an existing folder must be empty).

        Args:
            folder: the ledger folder, e.g. ``<server job workspace>/fedsegnet_ledger``.
            log_id: the ledger's id (the job id).
            resume_from: a previous job's ledger folder (or :class:`Ledger`) to continue: its
                signed entries and heads are copied verbatim (the tree goes on, so RFC 9162
                consistency proofs span the resume) and a ``resume`` entry carrying its last
                signed head is appended. Defaults to ``None``.
            resume_fields: more fields of that ``resume`` entry, e.g. ``{"job_id": the interrupted
                job, "global_model": hash_weights of the model the resumed job starts from,
                "rounds_completed": n}`` (``verify`` chains the rounds through ``global_model``).
                Defaults to ``None``.

        Returns:
            The new ledger.

        Raises:
            LedgerError: naming the folder when it is not empty, or the previous ledger when it
                has no signed head or does not open cleanly.
        """
        folder = Path(folder)
        if not isinstance(log_id, str) or not log_id:
            raise LedgerError(f"log_id={log_id!r}: must be a non-empty string (the job id)")
        previous = None
        if resume_from is not None:
            previous = resume_from if isinstance(resume_from, Ledger) else cls.open(resume_from)
            if previous.last_head is None:
                raise LedgerError(f"{previous.folder}: resume_from a ledger with no signed tree head")
            if previous.folder.resolve() == folder.resolve():
                raise LedgerError(f"{folder}: resume_from must be another job's ledger folder")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise LedgerError(f"{folder}: exists and is not an empty folder; the ledger does not write among other files")
        folder.mkdir(parents=True, exist_ok=True)
        marker = {"format": FORMAT, "version": 1, "log_id": log_id, "created": utc_now()}
        fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(canonical_bytes(marker) + b"\n")
        (folder / CERTS).mkdir()
        ledger = cls(folder, log_id, [], [])
        if previous is not None:
            ledger._continue(previous, resume_fields or {})
        return ledger

    @classmethod
    def open(cls, folder) -> "Ledger":
        """Reopen a ledger (a restarted server) and check it: every line parses, every head's root
        is the root of the entries.

        Raises:
            LedgerError: naming the folder when it is not a ledger; TornLineError for a cut line;
                LedgerError naming the line and round when entries and heads disagree.
        """
        folder = Path(folder)
        try:
            marker = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):
            raise LedgerError(f"{folder}: not a ledger folder (no readable {MARKER})") from None
        if not isinstance(marker, dict) or marker.get("format") != FORMAT:
            raise LedgerError(f"{folder / MARKER}: not a {FORMAT} marker")
        heads = [
            parse_canonical(line, f"{folder / HEADS} line {i + 1}") for i, line in enumerate(read_lines(folder / HEADS))
        ]
        return cls(folder, str(marker.get("log_id")), read_lines(folder / ENTRIES), heads)

    @classmethod
    def open_or_create(cls, folder, log_id: str, resume_from=None, resume_fields: Mapping | None = None) -> "Ledger":
        """:meth:`open` when ``folder`` holds a ledger, else :meth:`create` (``resume_from`` applies then)."""
        if (Path(folder) / MARKER).exists():
            return cls.open(folder)
        return cls.create(folder, log_id, resume_from=resume_from, resume_fields=resume_fields)

    def _continue(self, previous: "Ledger", fields: Mapping) -> None:
        head = previous.last_head
        for cert in sorted((previous.folder / CERTS).glob("*.pem")):
            self.add_cert(load_certificate(cert))
        for line in previous._lines[: head["size"]]:
            append_line(self.folder / ENTRIES, line)
            self._lines.append(line)
            self._entries.append(parse_canonical(line, "previous entry"))
            self.tree.append(line)
        for h in previous.heads:
            append_line(self.folder / HEADS, canonical_bytes(h))
            self._heads.append(dict(h))
        entry = resume_entry(head, str(previous.folder))
        entry.update({k: v for k, v in fields.items() if k not in entry})
        entry["unsigned_previous_entries"] = previous.size - head["size"]
        self.append(entry)
        logger.info(
            "ledger %s: continues %s from its head of size %d (%s)",
            self.folder, previous.folder, head["size"], previous._label_at(head["size"]),
        )

    # ---- reading -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._lines)

    @property
    def entries(self) -> list[dict]:
        """Copies of the entries, in order."""
        return [json.loads(line) for line in self._lines]

    def line(self, index: int) -> bytes:
        """The stored bytes of entry ``index`` (what its leaf hash is over)."""
        return self._lines[index]

    @property
    def heads(self) -> list[dict]:
        return [dict(h) for h in self._heads]

    @property
    def last_head(self) -> dict | None:
        return dict(self._heads[-1]) if self._heads else None

    def root(self, size: int | None = None) -> bytes:
        return self.tree.root(size)

    def _label_at(self, size: int) -> str:
        return entry_label(self._entries[size - 1]) if size else "empty"

    def cert(self, sha256: str):
        """The certificate stored under ``certs/<sha256>.pem``.

        Raises:
            LedgerError: naming the file when it is missing.
        """
        path = self.folder / CERTS / f"{sha256}.pem"
        if not path.is_file():
            raise LedgerError(f"{path}: no such certificate in the ledger")
        return load_certificate(path)

    # ---- writing -------------------------------------------------------------------------
    def add_cert(self, cert) -> str:
        """Store a certificate once under ``certs/<sha256>.pem``; returns its sha256."""
        cert = load_certificate(cert)
        sha = cert_sha256(cert)
        path = self.folder / CERTS / f"{sha}.pem"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(cert_pem(cert))
        return sha

    def append(self, entry: Mapping) -> int:
        """Append an entry (from :mod:`~fedsegnet.ledger.entries`); its ``index`` is set here.

        Args:
            entry: the entry dict (not mutated).

        Returns:
            The entry's 0-based index (its leaf index).

        Raises:
            CanonicalError: naming the field that cannot be encoded; LedgerError when ``entry``
                already has another index.
        """
        index = self.size
        entry = dict(entry)
        if entry.get("index", index) != index:
            raise LedgerError(f"entry index {entry['index']!r}: the next entry of {self.folder} has index {index}")
        entry["index"] = index
        check_entry(entry, f"entry {index}")
        data = canonical_bytes(entry)
        append_line(self.folder / ENTRIES, data)
        self._lines.append(data)
        self._entries.append(json.loads(data))
        self.tree.append(data)
        logger.debug("ledger %s: entry %d (%s), %d bytes", self.folder, index, entry_label(entry), len(data))
        return index

    def sign_head(self, signer: Signer, timestamp: str | None = None) -> dict:
        """Sign the tree head of the current size and append it to ``heads.jsonl``.

        Args:
            signer: the server's key pair (from its kit, or :func:`~fedsegnet.ledger.signing.generate_signer`).
            timestamp: ISO-8601 UTC; defaults to now.

        Returns:
            The signed head.

        Raises:
            LedgerError: when the ledger is empty.
        """
        if not self.size:
            raise LedgerError(f"{self.folder}: nothing to sign, the ledger is empty")
        rounds = [e["round"] for e in self._entries if e.get("kind") == "round"]
        self.add_cert(signer.cert)
        head = sign_head(signer, self.size, self.tree.root(), self.log_id, rounds[-1] if rounds else None, timestamp)
        append_line(self.folder / HEADS, canonical_bytes(head))
        self._heads.append(head)
        logger.info("ledger %s: head of size %d signed by %s (%s)", self.folder, self.size, signer.name, signer.key_source)
        return dict(head)

    # ---- the witness protocol (server side) ---------------------------------------------
    def last_witnessed_size(self, site: str) -> int | None:
        """The size of the last head ``site`` witnessed according to the round entries, else ``None``."""
        for entry in reversed(self._entries):
            rec = (entry.get("witnesses") or {}).get(site) if entry.get("kind") == "round" else None
            if rec:
                return int(rec["size"])
        return None

    def witness_bundle(self, site: str, seen_sizes: Sequence[int] | None = None) -> dict:
        """What travels with the next task to ``site``: the last signed head, the certificate it was
        signed with, consistency proofs from the heads the site may have seen, and an inclusion
        proof of the site's last payload.

        Args:
            site: the site the task goes to.
            seen_sizes: head sizes to prove consistency from. Defaults to the last size the site
                witnessed (:meth:`last_witnessed_size`) and every head signed after it (all heads
                when it never witnessed), so that a lost reply does not make the site refuse.

        Returns:
            ``{"head", "cert_pem", "consistency": [{"from", "path"}], "inclusion": {"index",
            "entry", "path"} | None}``, plain JSON (hashes in hex). The inclusion proof is of the
            last entry holding the site's payload, or of a ``resume`` entry after it: a resumed
            job voids the payloads the interrupted job had not recorded, in the open.

        Raises:
            LedgerError: when no head is signed yet.
        """
        head = self.last_head
        if head is None:
            raise LedgerError(f"{self.folder}: no signed tree head to send to {site!r}")
        size = head["size"]
        if seen_sizes is None:
            last = self.last_witnessed_size(site)
            seen = {h["size"] for h in self._heads if last is None or h["size"] >= last}
            if last is not None:
                seen.add(last)
        else:
            seen = set(seen_sizes)
        consistency = [
            {"from": s, "path": [h.hex() for h in self.tree.consistency_proof(s, size)]}
            for s in sorted(seen)
            if 1 <= s <= size
        ]
        inclusion = None
        for i in range(size - 1, -1, -1):  # the site's last payload, or a later resume (which voids it)
            if payload_of(self._entries[i], site) or self._entries[i].get("kind") == "resume":
                inclusion = {
                    "index": i,
                    "entry": self._lines[i].decode("ascii"),
                    "path": [h.hex() for h in self.tree.inclusion_proof(i, size)],
                }
                break
        return {
            "head": head,
            "cert_pem": cert_pem(self.cert(head["cert_sha256"])),
            "consistency": consistency,
            "inclusion": inclusion,
        }

    def state_dict(self) -> dict:
        """``{"folder", "log_id", "size", "head_size"}``: enough to check a reopened ledger is the same."""
        head = self.last_head
        return {"folder": str(self.folder), "log_id": self.log_id, "size": self.size, "head_size": head and head["size"]}

    def load_state_dict(self, state: Mapping) -> None:
        """Check that this ledger is (an extension of) the one ``state`` was taken from.

        Raises:
            LedgerError: naming both sizes when the ledger on disk is shorter than the state says.
        """
        if state.get("log_id") != self.log_id:
            raise LedgerError(f"{self.folder}: log_id {self.log_id!r}, the saved state is of {state.get('log_id')!r}")
        if int(state.get("size", 0)) > self.size:
            raise LedgerError(
                f"{self.folder}: {self.size} entries on disk, the saved state had {state['size']}: entries were lost"
            )
