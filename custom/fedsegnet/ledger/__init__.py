"""The federation's transparency log: canonical entries in an RFC 9162 Merkle tree, signed tree heads.

- :mod:`~fedsegnet.ledger.canonical`: canonical entry bytes, sha256 of files and weight dicts.
- :mod:`~fedsegnet.ledger.entries`: the entry kinds ``job_start``, ``round``, ``resume``, ``job_end``.
- :mod:`~fedsegnet.ledger.merkle`: RFC 9162 tree hashes, inclusion and consistency proofs.
- :mod:`~fedsegnet.ledger.signing`: kit keys and certificates, signed tree heads, the root CA check.
- :mod:`~fedsegnet.ledger.store`: :class:`Ledger`, the append-only folder a server job keeps.
- :mod:`~fedsegnet.ledger.witness`: :class:`SiteWitness`, what a site checks and signs.
- :mod:`~fedsegnet.ledger.verify`: :func:`verify`, per-entry results naming the first round at fault.

No FLARE here; ``docs/ledger.md`` describes the ledger, the witness protocol and the threat model.
"""

from fedsegnet.ledger.canonical import canonical_bytes, hash_payload, hash_weights, sha256_file
from fedsegnet.ledger.entries import job_end_entry, job_start_entry, resume_entry, round_entry
from fedsegnet.ledger.errors import (
    CanonicalError,
    LedgerError,
    ProofError,
    SignatureError,
    TornLineError,
    WitnessError,
)
from fedsegnet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from fedsegnet.ledger.signing import (
    KEY_SOURCE_GENERATED,
    KEY_SOURCE_KIT,
    Signer,
    certs_from_kits,
    generate_signer,
    root_ca_from_kits,
)
from fedsegnet.ledger.store import LEDGER_FOLDER, Ledger
from fedsegnet.ledger.verify import EntryCheck, VerifyResult, verify
from fedsegnet.ledger.witness import SiteWitness, verify_witness

__all__ = [
    "CanonicalError",
    "EntryCheck",
    "KEY_SOURCE_GENERATED",
    "KEY_SOURCE_KIT",
    "LEDGER_FOLDER",
    "Ledger",
    "LedgerError",
    "MerkleTree",
    "ProofError",
    "SignatureError",
    "Signer",
    "SiteWitness",
    "TornLineError",
    "VerifyResult",
    "WitnessError",
    "canonical_bytes",
    "certs_from_kits",
    "generate_signer",
    "hash_payload",
    "hash_weights",
    "job_end_entry",
    "job_start_entry",
    "leaf_hash",
    "resume_entry",
    "root_ca_from_kits",
    "round_entry",
    "sha256_file",
    "verify",
    "verify_consistency",
    "verify_inclusion",
    "verify_witness",
]
