"""Transports share one verifying TLS context: making one loads the CA bundle (about 15 ms of
CPU), which a worker building a provider per integration would otherwise pay each time."""

from __future__ import annotations

import ssl

from ticketing_core.http.network import NetworkPolicy, tls_context


def test_every_checked_transport_shares_one_verifying_context() -> None:
    first, second = NetworkPolicy().transport(), NetworkPolicy(allow_private=True).transport()
    try:
        assert first._pool._ssl_context is second._pool._ssl_context is tls_context()
    finally:
        first.close()
        second.close()
    assert tls_context().verify_mode is ssl.CERT_REQUIRED
    assert tls_context().check_hostname


def test_a_transport_may_still_be_given_its_own_context() -> None:
    own = ssl.create_default_context()
    transport = NetworkPolicy().transport(verify=own)
    try:
        assert transport._pool._ssl_context is own
    finally:
        transport.close()
