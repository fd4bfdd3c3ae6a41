"""Secure aggregation: the server learns only the sum of at least ``t`` sites' inputs (Bonawitz et
al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017), on a shared
support so that the compression carries over.

- :mod:`~fedsegnet.secagg.shamir`: Shamir shares over GF(2^127 - 1) of 32-byte seeds and keys.
- :mod:`~fedsegnet.secagg.keys`: X25519 + HKDF-SHA256 pairwise secrets, ChaCha20-Poly1305 sealed shares.
- :mod:`~fedsegnet.secagg.adverts`: key adverts signed with the startup-kit keys, checked under the root CA.
- :mod:`~fedsegnet.secagg.masking`: the ChaCha20 PRG, pairwise and self masks in ``Z_{2^bits}``, packing.
- :mod:`~fedsegnet.secagg.quantize`: :class:`RingQuantizer` (shared clip and scale, no-wrap check).
- :mod:`~fedsegnet.secagg.support`: flat model vectors and the public seed of a plan's random blocks.
- :mod:`~fedsegnet.secagg.plan`: :class:`RoundPlan`, the round's blocks, ranges and block scores; :func:`next_plan`.
- :mod:`~fedsegnet.secagg.error_feedback`: :class:`SecAggErrorFeedback`, the site's residual.
- :mod:`~fedsegnet.secagg.protocol`: :class:`SiteSecAgg`, :class:`ServerSecAgg` and their messages.

No FLARE here; ``docs/secure_aggregation.md`` gives the message flow and the threat model.
"""

from fedsegnet.secagg.adverts import KEYS_KIT, KEYS_UNCHECKED, KEYS_UNSIGNED, check_advert, sign_advert
from fedsegnet.secagg.error_feedback import SecAggErrorFeedback
from fedsegnet.secagg.errors import AdvertError, DecryptionError, ProtocolViolation, SecAggError, ShareError, ThresholdError
from fedsegnet.secagg.masking import expand, pack, unpack
from fedsegnet.secagg.plan import RoundPlan, next_plan
from fedsegnet.secagg.protocol import (
    KeyAdvert,
    MaskedInput,
    Roster,
    SecAggResult,
    ServerSecAgg,
    ShareBundle,
    ShareInbox,
    SiteSecAgg,
    UnmaskReply,
    UnmaskRequest,
    check_threshold,
)
from fedsegnet.secagg.quantize import RingQuantizer, ring_bits_needed
from fedsegnet.secagg.shamir import Share, reconstruct, share
from fedsegnet.secagg.support import flatten, unflatten

__all__ = [
    "AdvertError",
    "DecryptionError",
    "KEYS_KIT",
    "KEYS_UNCHECKED",
    "KEYS_UNSIGNED",
    "KeyAdvert",
    "MaskedInput",
    "ProtocolViolation",
    "RingQuantizer",
    "Roster",
    "RoundPlan",
    "SecAggError",
    "SecAggErrorFeedback",
    "SecAggResult",
    "ServerSecAgg",
    "Share",
    "ShareBundle",
    "ShareError",
    "ShareInbox",
    "SiteSecAgg",
    "ThresholdError",
    "UnmaskReply",
    "UnmaskRequest",
    "check_advert",
    "check_threshold",
    "expand",
    "flatten",
    "next_plan",
    "pack",
    "reconstruct",
    "ring_bits_needed",
    "share",
    "sign_advert",
    "unflatten",
    "unpack",
]
