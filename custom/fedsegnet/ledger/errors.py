"""The ledger's errors: each names the file, line, tree size, round or field at fault."""

from __future__ import annotations

from fedsegnet.errors import FedSegNetError

__all__ = ["LedgerError", "CanonicalError", "ProofError", "SignatureError", "TornLineError", "WitnessError"]


class LedgerError(FedSegNetError):
    """A ledger folder, entry or tree head is wrong or cannot be used; the message says where."""


class CanonicalError(LedgerError, ValueError):
    """A value cannot be encoded canonically (NaN, Inf, a non-string key, an unknown type).

    Args:
        field: dotted path of the value at fault inside the entry, e.g. ``"sites.site-1.weight"``.
        problem: what is wrong.
    """

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field or '<entry>'}: {problem}")


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify (RFC 9162 section 2.1.3.2 / 2.1.4.2)."""


class SignatureError(LedgerError):
    """A signature, key or certificate does not verify or is not the claimed signer's."""


class TornLineError(LedgerError):
    """The last line of a ledger file is incomplete (a write was interrupted); nothing was changed.

    Args:
        path: the file.
        line: 1-based number of the torn line.
        offset: byte offset where the torn line starts.
    """

    def __init__(self, path, line: int, offset: int):
        self.path = path
        self.line = line
        self.offset = offset
        super().__init__(
            f"{path}: line {line} (from byte {offset}) is incomplete, a write was interrupted; the ledger "
            f"refuses to go on and changed nothing. Move the file aside or cut it at byte {offset} "
            f"after keeping a copy."
        )


class WitnessError(LedgerError):
    """A site refuses a tree head: the message names the sizes, the round and what failed.

    Args:
        site: the witnessing site.
        problem: what failed, e.g. ``"head of size 7 is not consistent with the head of size 5 seen in round 2"``.
    """

    def __init__(self, site: str, problem: str):
        self.site = site
        self.problem = problem
        super().__init__(f"site {site!r} refuses the ledger head: {problem}")
