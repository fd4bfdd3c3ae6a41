"""The secure-aggregation errors: each names the round and the site (or field) at fault."""

from __future__ import annotations

from fedsegnet.errors import FedSegNetError


class SecAggError(FedSegNetError):
    """A secure-aggregation step cannot go on.

    Args:
        problem: what is wrong, in one line.
        round: the protocol round (the federated round number), when known. Defaults to None.
        site: the site at fault or concerned, when there is one. Defaults to None.
    """

    def __init__(self, problem: str, round: int | None = None, site: str | None = None):
        self.round = round
        self.site = site
        self.problem = problem
        where = []
        if round is not None:
            where.append(f"round {round}")
        if site is not None:
            where.append(f"site {site!r}")
        super().__init__(f"secure aggregation {', '.join(where)}: {problem}" if where else f"secure aggregation: {problem}")


class ShareError(SecAggError):
    """Shamir shares cannot be combined: too few, duplicate or inconsistent x, an unknown party, bad bytes."""


class ThresholdError(SecAggError):
    """Fewer sites than the threshold in a set the protocol needs (advertised, sharing, survivors, answering):
    the server cannot unmask, and an honest site refuses to go on."""


class ProtocolViolation(SecAggError):
    """A message breaks the protocol: wrong step or round, a set that is inconsistent, a request that would
    let the server unmask one site's input (both of its shares asked for). An honest site refuses it."""


class DecryptionError(SecAggError):
    """An encrypted share failed authentication (tampered, replayed to another receiver or round, wrong key)."""


class AdvertError(ProtocolViolation):
    """A key advert is not its site's own: unsigned where signatures are required, a signature that does not
    verify, signed for another round or session, a certificate of another site, not issued by the root CA
    or out of its validity dates. An honest site refuses the round; an honest server drops the advertiser.

    Args:
        problem: what is wrong, naming the advertiser.
        round: the round. Defaults to None.
        site: the site that refuses (None at the server: then the advertiser). Defaults to None.
        advertiser: the site whose advert is refused. Defaults to None.
    """

    def __init__(self, problem: str, round: int | None = None, site: str | None = None, advertiser: str | None = None):
        self.advertiser = advertiser
        super().__init__(problem, round, site)
