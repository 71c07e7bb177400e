from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.errors import CodecError, PeerError, SignatureError
from p2pnode.testing import capacity_ads, cpus
from p2pnode.wire import capacity_ad as ca
from p2pnode.wire import codec, envelope
from p2pnode.wire.peer_id import from_base58, peer_id_from_public_key, to_base58

KEY = SigningKey(b"\x07" * 32)


@given(capacity_ads(KEY))
def test_round_trip(ad: ca.CapacityAd) -> None:
    raw = ca.encode_ad(ad, KEY)
    assert len(raw) <= ca.MAX_AD_BYTES
    signed = ca.decode_ad(raw)
    assert signed.ad == ad
    assert signed.raw == raw


@given(capacity_ads(KEY))
def test_the_provider_is_read_without_a_signature_check(ad: ca.CapacityAd) -> None:
    raw = bytearray(ca.encode_ad(ad, KEY))
    raw[-1] ^= 1  # a broken signature: the provider is still read, decode_ad still refuses it
    assert ca.ad_peer(bytes(raw)) == ad.peer_id
    with pytest.raises(SignatureError):
        ca.decode_ad(bytes(raw))


@given(st.binary(max_size=5000))
def test_any_bytes_decode_or_raise_a_peer_error(data: bytes) -> None:
    for read in (ca.ad_peer, ca.decode_ad):
        try:
            read(data)
        except PeerError as exc:
            assert isinstance(exc, (CodecError, SignatureError))


@given(capacity_ads(KEY), st.data())
def test_any_single_byte_change_is_refused(ad: ca.CapacityAd, data: st.DataObject) -> None:
    raw = bytearray(ca.encode_ad(ad, KEY))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(PeerError):
        ca.decode_ad(bytes(raw))


def test_forged_ad_claiming_another_peer_is_refused() -> None:
    victim = SigningKey(b"\x01" * 32)
    attacker = SigningKey(b"\x02" * 32)
    ad = ca.CapacityAd(
        peer_id=peer_id_from_public_key(bytes(victim.verify_key)), seq=1, issued_at_ms=1000,
        expires_at_ms=2000, cpu=ca.CpuInfo("x", 1, 10, 5),
    )
    body = codec.encode(ad.body_map())
    forged = envelope.seal(ca.DOMAIN, body, attacker)
    with pytest.raises(SignatureError):
        ca.decode_ad(forged)


def test_signature_is_domain_separated() -> None:
    ad = ca.CapacityAd(
        peer_id=peer_id_from_public_key(bytes(KEY.verify_key)), seq=1, issued_at_ms=1000,
        expires_at_ms=2000, cpu=ca.CpuInfo("x", 1, 10, 5),
    )
    other_domain = envelope.seal(b"p2pnode/other/1\n", codec.encode(ad.body_map()), KEY)
    with pytest.raises(SignatureError):
        ca.decode_ad(other_domain)


def _signed_body(body: dict[str, object]) -> bytes:
    return envelope.seal(ca.DOMAIN, codec.encode(body), KEY)


def _valid_body() -> dict[str, object]:
    ad = ca.CapacityAd(
        peer_id=peer_id_from_public_key(bytes(KEY.verify_key)), seq=1, issued_at_ms=1000,
        expires_at_ms=2000, cpu=ca.CpuInfo("x", 1, 10, 5),
    )
    return ad.body_map()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "version"),
        ({"exp": 500}, "later than"),
        ({"seq": -1}, "outside"),
        ({"gpus": [{"idx": 0}] * 17}, "more than 16"),
        ({"cpu": {"model": "x", "cores": 1, "mem_total": 1, "mem_free": 2}}, "exceeds"),
        ({"load": 1.5}, "outside"),
        ({"addrs": ["/ip4/1.2.3.4/tcp/1" + "0" * 200]}, "at most"),
        ({"speed": {"x": -1.0}}, "outside"),
        ({"cpu": None}, "expected a map"),
    ],
)
def test_schema_violations_are_codec_errors(change: dict[str, object], message: str) -> None:
    body = _valid_body() | change
    with pytest.raises(CodecError, match=message):
        ca.decode_ad(_signed_body(body))


def test_duplicate_gpu_index_is_refused() -> None:
    gpu = {"idx": 0, "name": "g", "mem_total": 2, "mem_free": 1, "util": 0, "cc": "9.0", "driver": "d"}
    with pytest.raises(CodecError, match="duplicate"):
        ca.decode_ad(_signed_body(_valid_body() | {"gpus": [gpu, gpu]}))


def test_encode_refuses_a_key_that_is_not_the_ads_peer() -> None:
    ad = dataclasses.replace(
        ca.CapacityAd(peer_id=peer_id_from_public_key(bytes(KEY.verify_key)), seq=1,
                      issued_at_ms=1, expires_at_ms=2, cpu=ca.CpuInfo("x", 1, 1, 1)),
    )
    with pytest.raises(ValueError):
        ca.encode_ad(ad, SigningKey(b"\x09" * 32))


@given(cpus())
def test_peer_id_text_form_round_trips(cpu: ca.CpuInfo) -> None:
    pid = peer_id_from_public_key(bytes(KEY.verify_key))
    text = to_base58(pid)
    assert text.startswith("12D3KooW")
    assert from_base58(text) == pid
