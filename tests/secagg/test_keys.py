"""X25519 + HKDF pairwise secrets and the sealed shares (AEAD)."""

import pytest

from fedsegnet.secagg.errors import DecryptionError, SecAggError
from fedsegnet.secagg.keys import KeyPair, agree, check_public_key, open_sealed, seal


def test_both_sites_derive_the_same_secret_and_nothing_else_does():
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    k_ab = agree(a.private, b.public, 3, "site-a", "site-b", "s")
    assert k_ab == agree(b.private, a.public, 3, "site-b", "site-a", "s")
    assert len(k_ab) == 32
    others = {
        agree(a.private, b.public, 4, "site-a", "site-b", "s"),  # other round
        agree(a.private, b.public, 3, "site-a", "site-b", "c"),  # other purpose
        agree(a.private, b.public, 3, "site-a", "site-x", "s"),  # other names
        agree(a.private, c.public, 3, "site-a", "site-b", "s"),  # other key
    }
    assert k_ab not in others and len(others) == 4


def test_from_private_gives_the_public_key_back():
    pair = KeyPair.generate()
    assert KeyPair.from_private(pair.private) == pair
    with pytest.raises(SecAggError, match="32 bytes"):
        KeyPair.from_private(b"short")


def test_bad_keys_and_arguments_refused():
    a = KeyPair.generate()
    with pytest.raises(SecAggError, match="site 'b'.*s-public key: must be 32"):
        check_public_key(b"x" * 31, "b", 1, "s")
    with pytest.raises(SecAggError, match="all zero"):
        agree(a.private, bytes(32), 1, "a", "b", "s")
    with pytest.raises(SecAggError, match="with itself"):
        agree(a.private, a.public, 1, "a", "a", "s")
    with pytest.raises(SecAggError, match="purpose='x'"):
        agree(a.private, a.public, 1, "a", "b", "x")


def test_sealed_share_opens_only_for_its_sender_receiver_round():
    key = bytes(range(32))
    sealed = seal(key, b"share bytes", "site-a", "site-b", 5)
    assert len(sealed) == len(b"share bytes") + 28
    assert open_sealed(key, sealed, "site-a", "site-b", 5) == b"share bytes"
    for sender, receiver, rnd in (("site-c", "site-b", 5), ("site-a", "site-c", 5), ("site-a", "site-b", 6), ("site-b", "site-a", 5)):
        with pytest.raises(DecryptionError, match="failed authentication"):
            open_sealed(key, sealed, sender, receiver, rnd)
    for i in (0, 12, len(sealed) - 1):  # nonce, ciphertext, tag
        tampered = bytearray(sealed)
        tampered[i] ^= 1
        with pytest.raises(DecryptionError, match="round 5, site 'site-b': share from 'site-a' to 'site-b'"):
            open_sealed(key, bytes(tampered), "site-a", "site-b", 5)
    with pytest.raises(DecryptionError, match="too short"):
        open_sealed(key, sealed[:20], "site-a", "site-b", 5)
