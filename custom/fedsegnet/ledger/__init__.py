"""The federation's transparency log: canonical entries in an RFC 9162 Merkle tree, signed tree heads.

No FLARE here; ``docs/ledger.md`` describes the ledger, the witness protocol and the threat model.
"""
