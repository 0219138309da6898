"""The shared-secret registration MAC, as Synapse computes it."""

from __future__ import annotations

import hashlib
import hmac

from synfleet.run.register import registration_mac


def expected(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()


def test_fields_are_separated_by_nul() -> None:
    assert registration_mac("s", "n1", "alice", "pw", admin=False) == expected("s", b"n1\x00alice\x00pw\x00notadmin")
    assert registration_mac("s", "n1", "alice", "pw", admin=True) == expected("s", b"n1\x00alice\x00pw\x00admin")


def test_a_password_equal_to_the_nonce_is_still_separated() -> None:
    assert registration_mac("s", "same", "bob", "same", admin=False) == expected(
        "s", b"same\x00bob\x00same\x00notadmin"
    )
