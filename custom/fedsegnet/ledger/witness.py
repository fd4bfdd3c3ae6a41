"""A site's witness of the ledger: it checks each tree head it is sent and signs the ones it accepts.

The protocol (``docs/ledger.md``): with every task the server sends the last signed tree head,
the certificate it signed it with, a consistency proof from each head the site may have seen and
an inclusion proof of the site's last payload (:meth:`~fedsegnet.ledger.store.Ledger.witness_bundle`).
:meth:`SiteWitness.witness` checks, in order,

1. the certificate is the server's: common name = the server's name and, given the project's
   root CA, issued by it; without a root CA (simulator) the first certificate seen is pinned and
   any other is refused;
2. the head's signature verifies with that certificate;
3. the head does not go back: its size is at least that of the last head the site saw, and an
   RFC 9162 consistency proof from that head verifies (same size: same root, else a fork);
4. the site's last payload, when it sent one, is in the tree: the entry that holds its payload
   hash is included at its index (RFC 9162 inclusion proof) and names the same round and hash (a
   payload that arrived after its round's entry was written is refused as late in a later entry,
   whose record then names the payload's round), or a ``resume`` entry appended after the head the
   site saw when it sent the payload is (the interrupted job never recorded it; the resume says so
   in the ledger);

and then records the head in its file and returns the site's signature of it, which goes back
with the site's update and into the next round entry. Anything else raises
:class:`~fedsegnet.ledger.errors.WitnessError` naming the sizes and rounds; that is the reason the
site refuses the task with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from fedsegnet.ledger.canonical import canonical_bytes, parse_canonical, sha256_hex
from fedsegnet.ledger.entries import utc_now
from fedsegnet.ledger.errors import LedgerError, ProofError, SignatureError, WitnessError
from fedsegnet.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedsegnet.ledger.signing import (
    Signer,
    cert_sha256,
    check_certificate,
    load_certificate,
    verify_head,
    verify_signature,
)
from fedsegnet.ledger.store import append_line, read_lines

logger = logging.getLogger(__name__)

__all__ = ["SiteWitness", "WITNESS_FILE", "witness_body", "verify_witness"]

WITNESS_FILE = "ledger_heads_seen.jsonl"
WITNESS_TYPE = "fedsegnet.ledger.witness.v1"


def witness_body(record: Mapping) -> dict:
    """The signed part of a witness record: the site, the head's log id, size, root, the sha256 of the
    server's signature of the head (binding the witness to that signed head), the time."""
    return {
        "type": WITNESS_TYPE,
        "site": record.get("site"),
        "log_id": record.get("log_id"),
        "size": record.get("size"),
        "root": record.get("root"),
        "head_sig_sha256": record.get("head_sig_sha256"),
        "time": record.get("time"),
    }


def verify_witness(record: Mapping, cert, root_ca=None, where: str = "witness") -> None:
    """Check a site's witness record: its certificate is the site's (under ``root_ca`` if given)
    and the signature verifies.

    Raises:
        SignatureError: naming ``where`` and the site.
    """
    missing = [f for f in ("site", "size", "root", "time", "sig_alg", "signature", "cert_sha256") if f not in record]
    if missing:
        raise SignatureError(f"{where}: lacks {', '.join(missing)}")
    cert = check_certificate(cert, record["site"], root_ca, at=record["time"], where=where)
    if cert_sha256(cert) != record["cert_sha256"]:
        raise SignatureError(
            f"{where}: signed with certificate {str(record['cert_sha256'])[:16]}..., not {record['site']!r}'s "
            f"{cert_sha256(cert)[:16]}..."
        )
    verify_signature(cert, canonical_bytes(witness_body(record)), record["sig_alg"], record["signature"], where)


class SiteWitness:
    """The heads one site has seen and its own last payload, kept in a file of its workspace.

    Args:
        folder: where the witness file lives (e.g. the site's workspace); created when missing.
        signer: the site's key pair (its kit's ``client.key``/``client.crt``, or generated).
        server: the server's name, which its certificate must carry.
        root_ca: the project's ``rootCA.pem``; ``None`` (simulator) pins the first server
            certificate seen. Defaults to ``None``.

    Raises:
        LedgerError: naming the witness file when it cannot be read (a torn line included).
    """

    def __init__(self, folder, signer: Signer, server: str, root_ca=None):
        if not isinstance(signer, Signer):
            raise LedgerError(f"signer={signer!r}: must be a fedsegnet.ledger.signing.Signer")
        if not isinstance(server, str) or not server:
            raise LedgerError(f"server={server!r}: must be the server's name")
        self.folder = Path(folder)
        self.path = self.folder / WITNESS_FILE
        self.signer = signer
        self.site = signer.name
        self.server = server
        self.root_ca = None if root_ca is None else load_certificate(root_ca)
        self._records = [
            parse_canonical(line, f"{self.path} line {i + 1}") for i, line in enumerate(read_lines(self.path))
        ]

    # ---- state ---------------------------------------------------------------------------
    @property
    def last_head(self) -> dict | None:
        """The last head this site accepted, else ``None``."""
        heads = [r["head"] for r in self._records if r.get("kind") == "head"]
        return dict(heads[-1]) if heads else None

    @property
    def pending_payload(self) -> dict | None:
        """The site's last payload ``{"round", "payload_sha256"}`` not yet shown included, else ``None``."""
        pending = None
        for r in self._records:
            if r.get("kind") == "payload":
                pending = {"round": r["round"], "payload_sha256": r["payload_sha256"]}
            elif r.get("kind") == "head" and r.get("proved_payload"):
                if pending and r["proved_payload"] == pending:
                    pending = None
        return pending

    def state_dict(self) -> dict:
        """``{"records": [...]}``: the file's content (for a checkpoint next to other site state)."""
        return {"records": [dict(r) for r in self._records]}

    def load_state_dict(self, state: Mapping) -> None:
        """Check that the file holds at least the records of ``state`` (a lost witness file is refused).

        Raises:
            LedgerError: naming the file when it has fewer records than the state.
        """
        records = list(state.get("records", []))
        if self._records[: len(records)] != records:
            raise LedgerError(f"{self.path}: does not hold the {len(records)} records of the saved witness state")

    def _write(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        append_line(self.path, canonical_bytes(record))
        self._records.append(json.loads(canonical_bytes(record)))

    def record_payload(self, round: int, payload_sha256: str) -> None:
        """Remember the payload this site sends in ``round`` (call it when the update leaves)."""
        from fedsegnet.ledger.entries import check_sha256

        check_sha256("payload_sha256", payload_sha256)
        self._write({"kind": "payload", "round": int(round), "payload_sha256": payload_sha256, "time": utc_now()})

    # ---- the check -----------------------------------------------------------------------
    def _refuse(self, problem: str):
        logger.warning("site %s refuses the ledger head: %s", self.site, problem)
        raise WitnessError(self.site, problem)

    def witness(self, bundle: Mapping) -> dict:
        """Check a bundle from the server and sign its head.

        Args:
            bundle: from :meth:`~fedsegnet.ledger.store.Ledger.witness_bundle`.

        Returns:
            The witness record ``{site, log_id, size, root, head_sig_sha256, time, sig_alg,
            signature, cert_sha256, key_source}`` to return with the site's update.

        Raises:
            WitnessError: naming the sizes and rounds of what failed; nothing is recorded then.
        """
        try:
            head = dict(bundle["head"])
            size, root = int(head["size"]), bytes.fromhex(head["root"])
            cert = load_certificate(bundle["cert_pem"])
        except (KeyError, TypeError, ValueError, SignatureError) as exc:
            self._refuse(f"the bundle is malformed ({exc})")
        at = f"head of size {size} (round {head.get('round')})"
        try:
            check_certificate(cert, self.server, self.root_ca, at=head.get("timestamp"), where=at)
            verify_head(head, cert, None, self.server, where=at)
        except SignatureError as exc:
            self._refuse(str(exc))
        pinned = [r["head"]["cert_sha256"] for r in self._records if r.get("kind") == "head"]
        if self.root_ca is None and pinned and pinned[0] != head["cert_sha256"]:
            self._refuse(
                f"{at} is signed with certificate {head['cert_sha256'][:16]}..., but the server signed the "
                f"heads seen before with {pinned[0][:16]}... (no root CA to check a new one against)"
            )
        last = self.last_head
        if last is not None:
            seen = f"the head of size {last['size']} (round {last.get('round')}) seen before"
            if size < last["size"]:
                self._refuse(f"{at} is smaller than {seen}: the server went back in history")
            if size == last["size"]:
                if head["root"] != last["root"]:
                    self._refuse(f"{at} has another root than {seen}: two histories of one size (a fork)")
            else:
                proofs = {p.get("from"): p.get("path") for p in bundle.get("consistency") or [] if isinstance(p, Mapping)}
                if last["size"] not in proofs:
                    self._refuse(f"{at} comes with no consistency proof from {seen}")
                try:
                    path = [bytes.fromhex(h) for h in proofs[last["size"]]]
                    verify_consistency(last["size"], size, bytes.fromhex(last["root"]), root, path)
                except (ProofError, ValueError, TypeError) as exc:
                    self._refuse(f"{at} is not consistent with {seen}: {exc}")
        proved = None
        pending = self.pending_payload
        if pending is not None:
            inc = bundle.get("inclusion")
            what = f"this site's payload of round {pending['round']} (sha256 {pending['payload_sha256'][:16]}...)"
            if not isinstance(inc, Mapping):
                self._refuse(f"{at} comes with no inclusion proof of {what}")
            try:
                line = str(inc["entry"]).encode("ascii")
                entry = parse_canonical(line, f"the entry {inc['index']} sent with the {at}")
                verify_inclusion(leaf_hash(line), int(inc["index"]), size, [bytes.fromhex(h) for h in inc["path"]], root)
            except (KeyError, TypeError, ValueError, LedgerError) as exc:
                self._refuse(f"{what} is not shown included in the {at}: {exc}")
            rec = (entry.get("sites") or {}).get(self.site) or (entry.get("refused") or {}).get(self.site) or {}
            seen_size = last["size"] if last is not None else 0
            if entry.get("kind") == "resume" and int(inc["index"]) >= seen_size:
                # the job was interrupted after this site sent its payload and resumed in a new job:
                # the payloads the interrupted job had not recorded are void, in the open (the resume entry)
                logger.warning("site %s: its payload of round %s was not recorded before the job was resumed "
                               "(resume entry %s)", self.site, pending["round"], inc["index"])  # fmt: skip
            # a payload that arrived after its round's entry is recorded, refused as late, in a later entry
            elif rec.get("round", entry.get("round")) != pending["round"] or rec.get("payload_sha256") != pending["payload_sha256"]:
                self._refuse(
                    f"{what} is not in the ledger: entry {inc['index']} (round {entry.get('round')}) records "
                    f"payload {str(rec.get('payload_sha256'))[:16]}... for this site"
                )
            proved = pending
        record = {
            "site": self.site,
            "log_id": head.get("log_id"),
            "size": size,
            "root": head["root"],
            "head_sig_sha256": sha256_hex(str(head["signature"]).encode("ascii")),
            "time": utc_now(),
        }
        record["sig_alg"] = self.signer.algorithm
        record["cert_sha256"] = self.signer.cert_sha256
        record["key_source"] = self.signer.key_source
        record["signature"] = self.signer.sign(canonical_bytes(witness_body(record)))
        self._write({"kind": "head", "head": head, "proved_payload": proved, "time": record["time"]})
        logger.info("site %s: witnessed the ledger head of size %d (round %s)", self.site, size, head.get("round"))
        return record
