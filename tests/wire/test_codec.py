from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import CodecError, OversizedError, PeerError
from p2pnode.wire import codec

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        value = codec.decode(data, max_size=256)
    except CodecError:
        return
    codec._check_plain(value, 0, codec.MAX_DEPTH)  # what comes out is plain data


@given(plain)
def test_plain_values_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value), max_size=1 << 16) == value


@given(plain, st.integers(min_value=0, max_value=200))
def test_truncated_encodings_are_refused(value: object, cut: int) -> None:
    data = codec.encode(value)
    if cut >= len(data):
        return
    with pytest.raises(CodecError):
        codec.decode(data[:cut], max_size=1 << 16)


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(OversizedError) as info:
        codec.decode(b"\x00" * 11, max_size=10)
    assert info.value.code == "oversized"
    assert isinstance(info.value, PeerError)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x02", "trailing"),
        (bytes.fromhex("9f01ff"), "indefinite"),
        (bytes.fromhex("a2616101616102"), "Duplicate"),
        (bytes.fromhex("c11a514b67b0"), "datetime"),  # tag 1: epoch date
        (bytes.fromhex("d82a4100"), "tag"),  # tag 42 (CID): unknown tag
        (b"\x81" * 50 + b"\x01", "deep"),
        (cbor2.dumps(float("nan")), "non-finite"),
        (cbor2.dumps({b"k": 1}), "map key"),
        (b"", "empty"),
    ],
)
def test_refused_forms(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode(data, max_size=1024)
    assert reason.lower() in str(info.value).lower() or info.value.code == "malformed"


def test_non_bytes_input_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.decode("text", max_size=10)  # type: ignore[arg-type]
