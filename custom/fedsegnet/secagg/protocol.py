"""The secure-aggregation protocol (Bonawitz et al., CCS 2017, section 4, double masking) as two pure
state machines that a controller drives message by message.

One round, sites ``U`` (names sort to give signs and Shamir ``x``), threshold ``t``::

    step 0 advertise   site -> server  KeyAdvert(c_pk, s_pk)            server -> sites  Roster(U1, t, ring)
    step 1 share keys  site -> server  ShareBundle({v: sealed shares})  server -> site v ShareInbox(U2, {u: sealed})
    step 2 masked      site -> server  MaskedInput(y_u)                 server -> sites  UnmaskRequest(U3, U2 - U3)
    step 3 unmask      site -> server  UnmaskReply(b-shares of U3, s-shares of U2 - U3)
    server: result() -> the ring sum of the inputs of U3

:class:`SiteSecAgg` calls: :meth:`~SiteSecAgg.advertise`, :meth:`~SiteSecAgg.share_keys`,
:meth:`~SiteSecAgg.masked_input`, :meth:`~SiteSecAgg.unmask`. :class:`ServerSecAgg` takes each
message with a ``receive_*`` method and closes a step (after all answered, or at a timeout: the rest
count as dropped) with :meth:`~ServerSecAgg.roster`, :meth:`~ServerSecAgg.inboxes`,
:meth:`~ServerSecAgg.unmask_request`, :meth:`~ServerSecAgg.result`. Every message has
``to_dict()``/``from_dict()`` (str, int, bytes, lists and dicts of them) and ``nbytes()``.

Signed adverts (:mod:`fedsegnet.secagg.adverts`): given its startup-kit :class:`~fedsegnet.ledger.signing.Signer`,
a site signs its two public keys with its name, the round and the session (the job id); the server
keeps each signature record and the :class:`Roster` carries them; every site checks every other
site's advert against the signer's certificate (its name, the root CA, its validity dates) before it
shares anything, and refuses the round otherwise (:class:`~fedsegnet.secagg.errors.AdvertError`).
Without kits (the simulator) a site runs unsigned or with generated keys, and
:attr:`SiteSecAgg.key_check` / :attr:`SecAggResult.key_check` say so.

An honest site refuses (:class:`~fedsegnet.secagg.errors.ProtocolViolation` or
:class:`~fedsegnet.secagg.errors.ThresholdError`, naming the round and the problem): a set of fewer
than ``t`` sites, a threshold below its own minimum or not above half the advertised sites, its own
keys changed in the roster, one public key for two sites, a site listed both as survivor and as
dropped, a request for both the b-share and the s-share of one site (directly, or by a second
unmask request), itself listed as dropped after it sent its masked input, and any message of the
wrong step or round. The server raises the same errors for a site's bad message (the controller
logs it and treats the site as dropped) and :class:`ThresholdError` when it cannot go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

from fedsegnet.ledger.errors import SignatureError
from fedsegnet.ledger.signing import Signer, check_certificate, load_certificate
from fedsegnet.secagg import shamir
from fedsegnet.secagg.adverts import KEYS_KIT, KEYS_UNCHECKED, KEYS_UNSIGNED, check_advert, sign_advert, weakest
from fedsegnet.secagg.errors import ProtocolViolation, SecAggError, ShareError, ThresholdError
from fedsegnet.secagg.keys import KeyPair, agree, check_public_key, open_sealed, seal
from fedsegnet.secagg.masking import SEED_BYTES, add_mask, check_ring_bits, check_ring_vector, expand, mask_input, pack, pair_sign, unpack

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- messages


class _Message:
    KIND = ""

    def to_dict(self) -> dict:
        """The message as plain types (str, int, bytes, lists, dicts), with ``"kind"``."""
        d = asdict(self)
        d["kind"] = self.KIND
        return d

    @classmethod
    def from_dict(cls, data: Mapping):
        """The message from :meth:`to_dict`'s output.

        Raises:
            ProtocolViolation: another kind, or missing fields.
        """
        if not isinstance(data, Mapping) or data.get("kind") != cls.KIND:
            got = data.get("kind") if isinstance(data, Mapping) else type(data).__name__
            raise ProtocolViolation(f"expected a {cls.KIND!r} message, got {got!r}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ProtocolViolation(f"{cls.KIND} message lacks {missing}", data.get("round"), data.get("site"))
        return cls(**{n: data[n] for n in names if n in data})

    def nbytes(self) -> int:
        """Payload bytes: bytes and string fields, field names, 8 per integer (a serializer adds its own framing)."""
        return _nbytes(asdict(self))


def _nbytes(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, Mapping):
        return sum(_nbytes(k) + _nbytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 8


@dataclass
class KeyAdvert(_Message):
    """Step 0, site -> server: the site's two public keys for the round, signed when the site has a signer."""

    KIND = "secagg.advert"
    site: str
    round: int
    c_public: bytes
    s_public: bytes
    session: str = ""
    """The job id the advert belongs to."""
    signature: dict = field(default_factory=dict)
    """The signature record of :func:`~fedsegnet.secagg.adverts.sign_advert`; ``{}`` when unsigned."""


@dataclass
class Roster(_Message):
    """Step 0, server -> every site of ``adverts``: the round's U1, threshold and ring."""

    KIND = "secagg.roster"
    round: int
    threshold: int
    ring_bits: int
    length: int
    adverts: dict = field(default_factory=dict)
    """``{site: [c_public, s_public]}``"""
    signatures: dict = field(default_factory=dict)
    """``{site: signature record}`` of every site of ``adverts`` that signed its advert."""


@dataclass
class ShareBundle(_Message):
    """Step 1, site -> server: sealed shares for every other site of U1."""

    KIND = "secagg.shares"
    site: str
    round: int
    sealed: dict = field(default_factory=dict)
    """``{receiver: bytes}``"""


@dataclass
class ShareInbox(_Message):
    """Step 1, server -> site ``receiver``: U2 and the sealed shares addressed to it."""

    KIND = "secagg.inbox"
    round: int
    receiver: str
    sharing: list = field(default_factory=list)
    sealed: dict = field(default_factory=dict)
    """``{sender: bytes}``"""


@dataclass
class MaskedInput(_Message):
    """Step 2, site -> server: ``y_u`` packed at the ring's bits."""

    KIND = "secagg.masked"
    site: str
    round: int
    data: bytes


@dataclass
class UnmaskRequest(_Message):
    """Step 2, server -> every site of U3: the survivors U3 and the dropped U2 - U3."""

    KIND = "secagg.unmask_request"
    round: int
    survivors: list = field(default_factory=list)
    dropped: list = field(default_factory=list)


@dataclass
class UnmaskReply(_Message):
    """Step 3, site -> server: b-shares of the survivors, s-shares of the dropped."""

    KIND = "secagg.unmask_reply"
    site: str
    round: int
    b_shares: dict = field(default_factory=dict)
    s_shares: dict = field(default_factory=dict)


@dataclass
class SecAggResult:
    """What the server learns: the ring sum of the survivors' inputs and who took part.

    Attributes:
        round: the round.
        ring_sum: uint32 ``(length,)``, the sum of ``survivors``' ring inputs mod ``2^ring_bits``.
        survivors: sites whose inputs are in the sum (U3).
        dropped: sites that shared keys but sent no masked input (U2 - U3).
        responders: survivors that sent unmasking shares (U4).
        key_checks: ``{site: label}`` for U1, what the server's check of each advert proved
            (:data:`~fedsegnet.secagg.adverts.KEYS_KIT`, ``KEYS_UNCHECKED`` or ``KEYS_UNSIGNED``).
    """

    round: int
    ring_sum: np.ndarray
    survivors: list
    dropped: list
    responders: list
    key_checks: dict = field(default_factory=dict)

    @property
    def key_check(self) -> str:
        """The weakest label of :attr:`key_checks`: ``"unsigned"`` when any advert was unsigned."""
        return weakest(self.key_checks.values())


# ---------------------------------------------------------------------------------------------- checks


def check_threshold(threshold, n_sites: int, field: str = "secagg_threshold") -> int:
    """``threshold`` when ``n_sites / 2 < threshold <= n_sites`` and ``threshold >= 2``.

    A threshold at or below half the sites would let a server that tells two halves different
    survivor sets collect b-shares from one half and s-shares from the other
    (docs/secure_aggregation.md, threat model).

    Raises:
        SecAggError: naming ``field`` with the valid range.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not (max(2, n_sites // 2 + 1) <= threshold <= n_sites):
        raise SecAggError(f"{field}={threshold!r}: must be an integer in {max(2, n_sites // 2 + 1)}..{n_sites} for {n_sites} sites")
    return threshold


def _check_name(site, what: str = "site") -> str:
    if not isinstance(site, str) or not site:
        raise SecAggError(f"{what}={site!r}: must be a non-empty string")
    return site


def _check_signing(session, signer, root_ca, require_signed, round, site):
    """The checked ``(session, root_ca)`` of a site's or the server's signing settings."""
    if not isinstance(session, str):
        raise SecAggError(f"session={session!r}: must be a string (the job id)", round, site)
    if not isinstance(require_signed, bool):
        raise SecAggError(f"require_signed={require_signed!r}: must be True or False", round, site)
    if signer is not None and not isinstance(signer, Signer):
        raise SecAggError(f"signer={signer!r}: must be a fedsegnet.ledger.signing.Signer or None", round, site)
    if (signer is not None or require_signed) and not session:
        raise SecAggError(
            "session='': signed adverts need the job id as their session (else an advert could be replayed in another job)",
            round, site,
        )  # fmt: skip
    if root_ca is not None:
        try:
            root_ca = load_certificate(root_ca)
        except SignatureError as e:
            raise SecAggError(f"root_ca: {e}", round, site) from None
    return session, root_ca


def _load_certs(certs, round, site) -> dict:
    if certs is not None and not isinstance(certs, Mapping):
        raise SecAggError(f"certs: must be a dict {{site: certificate}}, got {type(certs).__name__}", round, site)
    try:
        return {_check_name(v, "certs key"): load_certificate(c) for v, c in (certs or {}).items()}
    except SignatureError as e:
        raise SecAggError(f"certs: {e}", round, site) from None


def _parties(sites: Iterable[str]) -> dict[str, int]:
    return {s: i + 1 for i, s in enumerate(sorted(sites))}


def _fields_blob(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _blob_fields(blob: bytes, count: int, what: str, round: int, site: str) -> list[bytes]:
    out, i = [], 0
    for _ in range(count):
        if i + 4 > len(blob):
            raise ProtocolViolation(f"{what}: truncated", round, site)
        size = int.from_bytes(blob[i : i + 4], "big")
        out.append(blob[i + 4 : i + 4 + size])
        i += 4 + size
    if i != len(blob) or any(len(p) == 0 for p in out):
        raise ProtocolViolation(f"{what}: malformed", round, site)
    return out


# ---------------------------------------------------------------------------------------------- site


class SiteSecAgg:
    """One site's side of one round.

    Args:
        site: this site's name.
        round: the round number.
        min_threshold: the smallest threshold this site accepts (its own policy, not the server's).
            Defaults to 2.
        randbelow: Shamir coefficients' source, for tests only. Defaults to None (``secrets``).
        session: the job id; inside every signature, so that no advert of another job passes.
            Defaults to ``""`` (allowed only unsigned).
        signer: this site's startup-kit key pair (``Signer.from_kit``) or a generated one
            (``generate_signer``, the simulator); its name must be ``site``. Defaults to None
            (this site's advert is unsigned).
        root_ca: the project's ``rootCA.pem`` (path, PEM or loaded): every other site's certificate
            must be issued by it, and so must this site's own. Defaults to None (issuers not checked:
            a signature then proves nothing against a server that substitutes keys).
        require_signed: refuse a roster holding an unsigned advert. Defaults to False.
        certs: certificates known from earlier rounds or sent once per job, ``{site: certificate}``
            (e.g. the previous round's :attr:`peer_certs`): used for adverts that carry only a
            fingerprint, and an advert signed under another certificate than the known one is refused.
            Defaults to None.
        send_cert: put this site's certificate in its advert. Defaults to True; False once the others
            hold it (certificates sent once per job).

    Raises:
        SecAggError: a bad name, round, ``min_threshold``, ``session``, ``signer``, ``root_ca`` or
            ``certs`` (naming it); a signer that is another site's or not issued by ``root_ca``;
            ``require_signed`` without a signer; a signer or ``require_signed`` without a session.
    """

    STEPS = ("advertise", "share_keys", "masked_input", "unmask", "done")

    def __init__(
        self,
        site: str,
        round: int,
        min_threshold: int = 2,
        randbelow=None,
        session: str = "",
        signer: Signer | None = None,
        root_ca=None,
        require_signed: bool = False,
        certs: Mapping | None = None,
        send_cert: bool = True,
    ):
        self.site = _check_name(site)
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise SecAggError(f"round={round!r}: must be an integer >= 0", None, site)
        if isinstance(min_threshold, bool) or not isinstance(min_threshold, int) or min_threshold < 2:
            raise SecAggError(f"min_threshold={min_threshold!r}: must be an integer >= 2", round, site)
        self.round = round
        self.min_threshold = min_threshold
        self._randbelow = randbelow
        self.session, self.root_ca = _check_signing(session, signer, root_ca, require_signed, round, site)
        if require_signed and signer is None:
            raise SecAggError("require_signed=True without a signer: this site's own advert would be unsigned", round, site)
        if not isinstance(send_cert, bool):
            raise SecAggError(f"send_cert={send_cert!r}: must be True or False", round, site)
        own = KEYS_UNSIGNED
        if signer is not None:
            try:
                check_certificate(signer.cert, site, self.root_ca, where=f"signer of {site!r}")
            except SignatureError as e:
                raise SecAggError(str(e), round, site) from None
            own = KEYS_KIT if self.root_ca is not None else KEYS_UNCHECKED
        self.certs = _load_certs(certs, round, site)
        self.signer = signer
        self.require_signed = require_signed
        self.send_cert = send_cert
        self.key_checks: dict[str, str] = {site: own}
        """``{site: label}``: this site's own label, then after :meth:`share_keys` every site of U1's
        (:data:`~fedsegnet.secagg.adverts.KEYS_KIT`, ``KEYS_UNCHECKED``, ``KEYS_UNSIGNED``)."""
        self.peer_certs: dict = {}
        """After :meth:`share_keys`: the certificates each other site of U1 signed with, ``{site: x509}``
        (for the next round's ``certs``)."""
        self.step = "advertise"
        self._c: KeyPair | None = None
        self._s: KeyPair | None = None
        self._b: bytes | None = None
        self.roster: Roster | None = None
        self.sharing: list[str] = []
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (s-share, b-share) held by this site

    def _refuse(self, problem: str, cls=ProtocolViolation):
        raise cls(problem, self.round, self.site)

    def _expect(self, step: str):
        if self.step != step:
            self._refuse(f"asked to {step} while at step {self.step!r} (each step once, in order)")

    def _check_round(self, msg):
        if msg.round != self.round:
            self._refuse(f"a {msg.KIND} message of round {msg.round!r}")

    def advertise(self) -> KeyAdvert:
        """Step 0: fresh ``c`` and ``s`` key pairs; their public halves for the server."""
        self._expect("advertise")
        self._c, self._s = KeyPair.generate(), KeyPair.generate()
        record = {}
        if self.signer is not None:
            record = sign_advert(self.signer, self.round, self.session, self._c.public, self._s.public, self.send_cert)
        self.step = "share_keys"
        return KeyAdvert(
            site=self.site, round=self.round, c_public=self._c.public, s_public=self._s.public,
            session=self.session, signature=record,
        )  # fmt: skip

    @property
    def key_check(self) -> str:
        """The weakest label of :attr:`key_checks`: :data:`~fedsegnet.secagg.adverts.KEYS_KIT` only
        when every advert of U1 was signed under the root CA; ``"unsigned"`` when any was not (then
        a malicious server could have substituted that site's keys)."""
        return weakest(self.key_checks.values())

    def share_keys(self, roster: Roster) -> ShareBundle:
        """Step 1: check the roster and every other site's signed advert, pick the self-mask seed,
        share ``s`` and ``b`` with U1.

        Raises:
            AdvertError: an advert of another site that is unsigned (under ``require_signed``), signed
                for another round or session, by another site's or an unknown CA's certificate, or whose
                signature does not verify (naming that site).
            ProtocolViolation: wrong step/round, this site missing or its keys changed, a key used
                twice, bad ring settings.
            ThresholdError: fewer than ``t`` sites, ``t`` below this site's minimum or not above half U1.
        """
        self._expect("share_keys")
        self._check_round(roster)
        adverts = roster.adverts
        if not isinstance(adverts, Mapping) or self.site not in adverts:
            self._refuse("this site is not in the roster")
        if list(adverts[self.site]) != [self._c.public, self._s.public]:
            self._refuse("the roster holds other public keys for this site than it advertised")
        signatures = roster.signatures
        if not isinstance(signatures, Mapping):
            self._refuse(f"roster signatures: must be a dict {{site: record}}, got {type(signatures).__name__}")
        strangers = sorted(set(signatures) - set(adverts))
        if strangers:
            self._refuse(f"the roster holds signatures of sites {strangers} that have no keys in it")
        keys, checks, certs = {}, {self.site: self.key_checks[self.site]}, {}
        for v, pair in adverts.items():
            _check_name(v, "roster site")
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                self._refuse(f"roster entry of {v!r}: must be [c_public, s_public]")
            for k in (check_public_key(pair[0], v, self.round, "c"), check_public_key(pair[1], v, self.round, "s")):
                if k in keys:
                    self._refuse(f"sites {keys[k]!r} and {v!r} have the same public key")
                keys[k] = v
            if v != self.site:
                checks[v], cert = check_advert(
                    v, self.round, self.session, pair[0], pair[1], signatures.get(v), root_ca=self.root_ca,
                    certs=self.certs, require_signed=self.require_signed, by=self.site,
                )  # fmt: skip
                if cert is not None:
                    certs[v] = cert
        t, n = roster.threshold, len(adverts)
        if isinstance(t, bool) or not isinstance(t, int) or t < self.min_threshold:
            self._refuse(f"threshold {t!r} is below this site's minimum {self.min_threshold}", ThresholdError)
        if n < t:
            self._refuse(f"{n} advertised sites, fewer than the threshold {t}", ThresholdError)
        if 2 * t <= n:
            self._refuse(f"threshold {t} is not above half of the {n} advertised sites", ThresholdError)
        check_ring_bits(roster.ring_bits)
        if isinstance(roster.length, bool) or not isinstance(roster.length, int) or roster.length < 1:
            self._refuse(f"roster length={roster.length!r}: must be an integer >= 1")
        self.roster = roster
        self.key_checks, self.peer_certs = dict(sorted(checks.items())), certs
        if self.key_check != KEYS_KIT:
            logger.info("secure aggregation round %d, site %r: adverts %s", self.round, self.site, self.key_checks)
        self._b = os.urandom(SEED_BYTES)
        s_shares = shamir.share(self._s.private, n, t, self._randbelow)
        b_shares = shamir.share(self._b, n, t, self._randbelow)
        parties = _parties(adverts)
        sealed = {}
        for v, x in parties.items():
            s_sh, b_sh = s_shares[x - 1].to_bytes(), b_shares[x - 1].to_bytes()
            if v == self.site:
                self._held[v] = (s_sh, b_sh)
                continue
            key = agree(self._c.private, adverts[v][0], self.round, self.site, v, "c")
            plain = _fields_blob(self.site.encode(), v.encode(), str(self.round).encode(), s_sh, b_sh)
            sealed[v] = seal(key, plain, self.site, v, self.round)
        self.step = "masked_input"
        return ShareBundle(site=self.site, round=self.round, sealed=sealed)

    def masked_input(self, inbox: ShareInbox, values: np.ndarray) -> MaskedInput:
        """Step 2: open the shares addressed to this site and mask ``values`` with U2.

        Args:
            inbox: the server's :class:`ShareInbox` for this site.
            values: uint32 ring elements ``(roster.length,)`` (e.g. from
                :meth:`~fedsegnet.secagg.error_feedback.SecAggErrorFeedback.encode`); not modified.

        Returns:
            The :class:`MaskedInput`.

        Raises:
            ProtocolViolation: wrong step/round/receiver, U2 not within U1 or without this site, a
                sender without a share, a share naming other parties.
            ThresholdError: fewer than ``t`` sites in U2.
            DecryptionError: a sealed share that fails authentication (naming its sender).
        """
        self._expect("masked_input")
        self._check_round(inbox)
        r = self.roster
        if inbox.receiver != self.site:
            self._refuse(f"an inbox addressed to {inbox.receiver!r}")
        sharing = list(inbox.sharing)
        if len(set(sharing)) != len(sharing):
            self._refuse(f"the sharing set repeats a site: {sorted(sharing)}")
        unknown = sorted(set(sharing) - set(r.adverts))
        if unknown:
            self._refuse(f"sites {unknown} in the sharing set were not in the roster")
        if self.site not in sharing:
            self._refuse("this site is not in the sharing set although it sent its shares")
        if len(sharing) < r.threshold:
            self._refuse(f"{len(sharing)} sites in the sharing set, fewer than the threshold {r.threshold}", ThresholdError)
        if set(inbox.sealed) != set(sharing) - {self.site}:
            self._refuse(f"sealed shares from {sorted(inbox.sealed)}, expected one from each of {sorted(set(sharing) - {self.site})}")
        try:
            values = check_ring_vector(values, r.ring_bits, "values", r.length)
        except SecAggError as e:
            raise SecAggError(e.problem, self.round, self.site) from e
        for u in sorted(inbox.sealed):
            key = agree(self._c.private, r.adverts[u][0], self.round, self.site, u, "c")
            plain = open_sealed(key, inbox.sealed[u], u, self.site, self.round)
            src, dst, rnd, s_sh, b_sh = _blob_fields(plain, 5, f"share from {u!r}", self.round, self.site)
            if (src.decode(), dst.decode(), rnd.decode()) != (u, self.site, str(self.round)):
                self._refuse(f"the share from {u!r} names sender {src!r}, receiver {dst!r}, round {rnd!r}")
            self._held[u] = (s_sh, b_sh)
        seeds = {v: agree(self._s.private, r.adverts[v][1], self.round, self.site, v, "s") for v in sharing if v != self.site}
        y = mask_input(values, self._b, seeds, self.site, r.ring_bits)
        self.sharing = sorted(sharing)
        self._s, self._b = None, None  # not needed again: only shares of them leave this site from now on
        self.step = "unmask"
        return MaskedInput(site=self.site, round=self.round, data=pack(y, r.ring_bits))

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Step 3: the b-shares of the survivors and the s-shares of the dropped, never both of one site.

        Raises:
            ProtocolViolation: wrong step/round (a second request included), a site in both sets, sets
                that are not a split of U2, this site listed as dropped.
            ThresholdError: fewer than ``t`` survivors.
        """
        if self.step == "done":
            self._refuse("a second unmask request in this round (answering it could reveal both shares of a site)")
        self._expect("unmask")
        self._check_round(request)
        survivors, dropped = list(request.survivors), list(request.dropped)
        both = sorted(set(survivors) & set(dropped))
        if both:
            self._refuse(
                f"asked for both the b-share and the s-share of {both} (listed as survivor and as dropped): "
                "that would unmask an individual input"
            )
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            self._refuse("the unmask request repeats a site")
        if set(survivors) | set(dropped) != set(self.sharing):
            self._refuse(
                f"survivors {sorted(survivors)} and dropped {sorted(dropped)} are not a split of the sharing set {self.sharing}"
            )
        if self.site in dropped:
            self._refuse("this site is listed as dropped although it sent its masked input")
        if len(survivors) < self.roster.threshold:
            self._refuse(f"{len(survivors)} survivors, fewer than the threshold {self.roster.threshold}", ThresholdError)
        reply = UnmaskReply(
            site=self.site,
            round=self.round,
            b_shares={v: self._held[v][1] for v in sorted(survivors)},
            s_shares={v: self._held[v][0] for v in sorted(dropped)},
        )
        self.step = "done"
        return reply


# ---------------------------------------------------------------------------------------------- server


class ServerSecAgg:
    """The server's side of one round: routes sealed shares, sums masked inputs, unmasks the sum.

    Args:
        round: the round number.
        sites: the sites the round was assigned to.
        threshold: ``t``, checked by :func:`check_threshold` against ``len(sites)``.
        ring_bits: bits of a ring element, 2..32.
        length: ring elements per input (the support size).
        session: the job id; an advert of another session is refused. Defaults to ``""``.
        root_ca: the project's root CA: a signed advert whose certificate it did not issue is
            refused (the site counts as not advertised), and :attr:`key_checks` can say ``"kit"``.
            Defaults to None (signatures checked, issuers not).
        require_signed: refuse unsigned adverts. Defaults to False.
        certs: certificates known from earlier rounds, ``{site: certificate}`` (the previous round's
            :attr:`peer_certs`), for adverts that carry only a fingerprint. Defaults to None.

    Raises:
        SecAggError: naming the field: bad round, repeated or empty site names, threshold, ring bits,
            length, session, root CA, certs; ``require_signed`` without a session.
    """

    def __init__(
        self,
        round: int,
        sites: Iterable[str],
        threshold: int,
        ring_bits: int,
        length: int,
        session: str = "",
        root_ca=None,
        require_signed: bool = False,
        certs: Mapping | None = None,
    ):
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise SecAggError(f"round={round!r}: must be an integer >= 0")
        sites = [_check_name(s) for s in sites]
        if len(set(sites)) != len(sites):
            raise SecAggError(f"sites: repeated names in {sorted(sites)}", round)
        self.round = round
        self.sites = sorted(sites)
        self.threshold = check_threshold(threshold, len(sites))
        self.ring_bits = check_ring_bits(ring_bits)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise SecAggError(f"length={length!r}: must be an integer >= 1", round)
        self.length = length
        self.session, self.root_ca = _check_signing(session, None, root_ca, require_signed, round, None)
        self.require_signed = require_signed
        self.certs = _load_certs(certs, round, None)
        self.key_checks: dict[str, str] = {}
        """``{site: label}`` of every accepted advert (:data:`~fedsegnet.secagg.adverts.KEYS_KIT`, ...)."""
        self.peer_certs: dict = {}
        """``{site: x509}``: the certificate each accepted signed advert was checked with (the next round's ``certs``)."""
        self.step = "adverts"
        self.adverts: dict[str, KeyAdvert] = {}
        self.bundles: dict[str, ShareBundle] = {}
        self.masked: dict[str, np.ndarray] = {}
        self.replies: dict[str, UnmaskReply] = {}
        self.u1: list[str] = []
        self.u2: list[str] = []
        self.u3: list[str] = []
        self.dropped: list[str] = []

    def _check(self, msg, step: str, allowed: Iterable[str], got: Mapping):
        site = getattr(msg, "site", None)
        if self.step != step:
            raise ProtocolViolation(f"a {msg.KIND} message while the server is at step {self.step!r}", self.round, site)
        if msg.round != self.round:
            raise ProtocolViolation(f"a {msg.KIND} message of round {msg.round!r}", self.round, site)
        if site not in allowed:
            raise ProtocolViolation(f"a {msg.KIND} message from a site not in this step's set", self.round, site)
        if site in got:
            raise ProtocolViolation(f"a second {msg.KIND} message", self.round, site)

    def _need(self, sites: list[str], what: str):
        if len(sites) < self.threshold:
            raise ThresholdError(f"{len(sites)} {what} ({sorted(sites)}), fewer than the threshold {self.threshold}", self.round)

    def receive_advert(self, msg: KeyAdvert) -> None:
        """Step 0: one site's public keys and signature record, checked as the sites will check them
        (so that an honest server drops a bad advert instead of every site refusing the round).

        Raises:
            AdvertError: unsigned under ``require_signed``, a bad signature, another round or session,
                a certificate that is not the site's or not the root CA's.
            ProtocolViolation/SecAggError: naming the site.
        """
        self._check(msg, "adverts", self.sites, self.adverts)
        if msg.session != self.session:
            raise ProtocolViolation(f"an advert of session {msg.session!r}, this round is of session {self.session!r}", self.round, msg.site)
        c = check_public_key(msg.c_public, msg.site, self.round, "c")
        s = check_public_key(msg.s_public, msg.site, self.round, "s")
        used = {k for a in self.adverts.values() for k in (a.c_public, a.s_public)}
        if c == s or c in used or s in used:
            raise ProtocolViolation("a public key that is already in use this round", self.round, msg.site)
        label, cert = check_advert(
            msg.site, self.round, self.session, c, s, msg.signature, root_ca=self.root_ca, certs=self.certs,
            require_signed=self.require_signed, by=msg.site,
        )  # fmt: skip
        self.key_checks[msg.site] = label
        if cert is not None:
            self.peer_certs[msg.site] = cert
        self.adverts[msg.site] = msg

    def roster(self) -> Roster:
        """Close step 0: the roster for every advertising site (U1).

        Raises:
            ThresholdError: fewer than ``t`` sites advertised.
        """
        self._need(list(self.adverts), "sites advertised keys")
        self.u1 = sorted(self.adverts)
        self.step = "shares"
        return Roster(
            round=self.round, threshold=self.threshold, ring_bits=self.ring_bits, length=self.length,
            adverts={u: [self.adverts[u].c_public, self.adverts[u].s_public] for u in self.u1},
            signatures={u: self.adverts[u].signature for u in self.u1 if self.adverts[u].signature},
        )  # fmt: skip

    def receive_shares(self, msg: ShareBundle) -> None:
        """Step 1: one site's sealed shares, one for every other site of U1."""
        self._check(msg, "shares", self.u1, self.bundles)
        expected = set(self.u1) - {msg.site}
        if not isinstance(msg.sealed, Mapping) or set(msg.sealed) != expected:
            raise ProtocolViolation(f"sealed shares for {sorted(msg.sealed)}, expected {sorted(expected)}", self.round, msg.site)
        if not all(isinstance(b, (bytes, bytearray)) for b in msg.sealed.values()):
            raise ProtocolViolation("a sealed share that is not bytes", self.round, msg.site)
        self.bundles[msg.site] = msg

    def inboxes(self) -> dict[str, ShareInbox]:
        """Close step 1: ``{site: ShareInbox}`` for every site of U2 (those that sent shares).

        Raises:
            ThresholdError: fewer than ``t`` sites sent shares.
        """
        self._need(list(self.bundles), "sites sent shares")
        self.u2 = sorted(self.bundles)
        self.step = "masked"
        return {
            v: ShareInbox(round=self.round, receiver=v, sharing=list(self.u2),
                          sealed={u: self.bundles[u].sealed[v] for u in self.u2 if u != v})
            for v in self.u2
        }  # fmt: skip

    def receive_masked_input(self, msg: MaskedInput) -> None:
        """Step 2: one site's masked input."""
        self._check(msg, "masked", self.u2, self.masked)
        self.masked[msg.site] = unpack(msg.data, self.length, self.ring_bits, f"masked input of {msg.site!r}")

    def unmask_request(self) -> UnmaskRequest:
        """Close step 2: survivors U3 (sent a masked input) and dropped U2 - U3, the same for all.

        Raises:
            ThresholdError: fewer than ``t`` masked inputs.
        """
        self._need(list(self.masked), "masked inputs")
        self.u3 = sorted(self.masked)
        self.dropped = sorted(set(self.u2) - set(self.u3))
        self.step = "unmask"
        return UnmaskRequest(round=self.round, survivors=list(self.u3), dropped=list(self.dropped))

    def receive_unmask_reply(self, msg: UnmaskReply) -> None:
        """Step 3: one survivor's shares; each must be its own (its Shamir ``x``) and well formed."""
        self._check(msg, "unmask", self.u3, self.replies)
        if set(msg.b_shares) != set(self.u3) or set(msg.s_shares) != set(self.dropped):
            raise ProtocolViolation(
                f"b-shares for {sorted(msg.b_shares)} and s-shares for {sorted(msg.s_shares)}, expected "
                f"{self.u3} and {self.dropped}", self.round, msg.site,
            )  # fmt: skip
        x = _parties(self.u1)[msg.site]
        for kind, shares in (("b", msg.b_shares), ("s", msg.s_shares)):
            for owner, data in shares.items():
                sh = shamir.Share.from_bytes(data, f"{kind}-share of {owner!r} from {msg.site!r}")
                if sh.x != x or sh.t != self.threshold:
                    raise ProtocolViolation(f"{kind}-share of {owner!r} has x={sh.x}, t={sh.t}; expected x={x}, t={self.threshold}", self.round, msg.site)
        self.replies[msg.site] = msg

    def result(self) -> SecAggResult:
        """Close step 3: reconstruct the survivors' self masks and the dropped sites' ``s`` keys; unmask the sum.

        Returns:
            The :class:`SecAggResult` (only the sum: no single input is ever unmasked here).

        Raises:
            ThresholdError: fewer than ``t`` survivors answered.
            ShareError: shares that do not reconstruct (naming the site whose secret failed).
        """
        if self.step != "unmask":
            raise ProtocolViolation(f"result asked while at step {self.step!r}", self.round)
        self._need(list(self.replies), "survivors sent unmasking shares")
        responders = sorted(self.replies)
        parties = _parties(self.u1)
        xs = [parties[w] for w in responders]
        total = np.zeros(self.length, dtype=np.uint32)
        for u in self.u3:
            add_mask(total, self.masked[u], +1, self.ring_bits)
        for u in self.u3:
            b = self._reconstruct(u, "b", responders, xs)
            add_mask(total, expand(b, self.length, self.ring_bits), -1, self.ring_bits)
        for v in self.dropped:
            s_key = KeyPair.from_private(self._reconstruct(v, "s", responders, xs))
            if s_key.public != self.adverts[v].s_public:
                raise ShareError("the reconstructed s-key does not match the advertised one", self.round, v)
            for u in self.u3:
                seed = agree(s_key.private, self.adverts[u].s_public, self.round, v, u, "s")
                # y_u carries pair_sign(u, v) * PRG(s_uv): take it off
                add_mask(total, expand(seed, self.length, self.ring_bits), -pair_sign(u, v), self.ring_bits)
        self.step = "done"
        checks = {u: self.key_checks[u] for u in self.u1}
        logger.info(
            "secure aggregation round %d: sum of %d site(s) unmasked; dropped %s; adverts %s",
            self.round, len(self.u3), self.dropped, weakest(checks.values()),
        )  # fmt: skip
        return SecAggResult(
            round=self.round, ring_sum=total, survivors=list(self.u3), dropped=list(self.dropped), responders=responders,
            key_checks=checks,
        )  # fmt: skip

    def _reconstruct(self, owner: str, kind: str, responders: list[str], xs: list[int]) -> bytes:
        field_name = "b_shares" if kind == "b" else "s_shares"
        shares = [shamir.Share.from_bytes(getattr(self.replies[w], field_name)[owner]) for w in responders]
        try:
            return shamir.reconstruct(shares, parties=xs)
        except ShareError as e:
            raise ShareError(f"the {kind}-secret does not reconstruct: {e.problem}", self.round, owner) from e
