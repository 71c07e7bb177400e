from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.errors import CodecError, PeerError, SignatureError
from p2pnode.wire import codec
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import peer_id_from_public_key

RK, PK = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
R, P = peer_id_from_public_key(bytes(RK.verify_key)), peer_id_from_public_key(bytes(PK.verify_key))
J, N = b"J" * 16, b"N" * 16


def samples() -> list[m.Message]:
    return [
        m.RequestForBids(J, "matmul", {"m": 8, "n": 8, "k": 8}, R, N, 1000, 2**41, 0, "", "freivalds"),
        m.Bid(J, 500, 20, 2**41, "numpy"), m.Decline(J, "busy", "full"), m.Inputs(J), m.Progress(J, 0.5),
        m.make_award(J, RK, requester=R, provider=P, nonce=N, price=500, deadline_ms=2**41),
        m.make_result(J, PK, requester=R, provider=P, nonce=N, digest=b"d" * 32, output=b"o", kernel_ms=3, backend="numpy"),
        m.make_receipt(J, RK, requester=R, provider=P, nonce=N, accepted=True, outcome="verified", paid=500),
        m.Cancel(J, "user"), m.Failed(J, "oom", "too big"),
    ]


@pytest.mark.parametrize("msg", samples(), ids=lambda x: x.TYPE)
def test_round_trip(msg: m.Message) -> None:
    assert m.decode(msg.encode()) == msg


@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_a_peer_error(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except PeerError:
        return
    assert isinstance(msg, m.Message)


@given(st.sampled_from(samples()), st.data())
def test_any_byte_flip_in_a_signed_message_is_caught(msg: m.Message, data: st.DataObject) -> None:
    if not isinstance(msg, m.Signed):
        return
    raw = bytearray(msg.raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    tampered = codec.encode({"t": msg.TYPE, "v": 1, "job": J, "env": bytes(raw)})
    with pytest.raises(PeerError):
        m.decode(tampered)


def test_an_award_signed_by_the_provider_is_forged() -> None:
    forged = m.make_award(J, PK, requester=R, provider=P, nonce=N, price=1, deadline_ms=1)
    with pytest.raises(SignatureError):
        m.decode(forged.encode())


def test_a_signed_body_cannot_move_to_another_job() -> None:
    award = m.make_award(J, RK, requester=R, provider=P, nonce=N, price=1, deadline_ms=1)
    moved = codec.encode({"t": "award", "v": 1, "job": b"K" * 16, "env": award.raw})
    with pytest.raises(CodecError, match="differs"):
        m.decode(moved)


def test_a_signature_for_one_kind_is_useless_as_another() -> None:
    receipt = m.make_receipt(J, RK, requester=R, provider=P, nonce=N, accepted=True, outcome="x", paid=1)
    as_award = codec.encode({"t": "award", "v": 1, "job": J, "env": receipt.raw})
    with pytest.raises(PeerError):
        m.decode(as_award)


@pytest.mark.parametrize(("change", "message"), [
    ({"t": "nope"}, "unknown type"), ({"v": 2}, "version"), ({"job": b"short"}, "exactly 16"),
    ({"verify": "trust-me"}, "verify"), ({"params": {"x": "y" * 5000}}, "too large|longer"),
])
def test_bad_rfbs(change: dict[str, object], message: str) -> None:
    base = {"t": "rfb", "v": 1, "job": J, **samples()[0].fields()}
    with pytest.raises(CodecError, match=message):
        m.decode(codec.encode(base | change))


def test_oversized_message() -> None:
    with pytest.raises(PeerError) as info:
        m.decode(b"\x00" * (m.MAX_MESSAGE + 1))
    assert info.value.code == "oversized"


def test_a_long_receipt_outcome_is_cut_to_what_receivers_accept() -> None:
    long = "verified: 90 sampled rows agree with a re-run by a checker whose name is long é" * 2
    r = m.make_receipt(J, RK, requester=R, provider=P, nonce=N, accepted=True, outcome=long, paid=5)
    back = m.decode(r.encode())
    assert isinstance(back, m.Receipt) and long.startswith(back.body["outcome"])
    assert len(back.body["outcome"].encode()) <= m.MAX_TEXT
