"""The fuzzing kit's strategies draw valid messages, and every decoder takes any mangling of them
either as a message or as a typed PeerError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode import testing
from p2pnode.errors import PeerError
from p2pnode.wire import blob as wb
from p2pnode.wire import job as m
from p2pnode.wire import report as rpt


@given(testing.job_messages())
def test_job_messages_round_trip(msg: m.Message) -> None:
    assert m.decode(msg.encode()) == msg


@given(testing.reports())
def test_reports_are_valid(r: rpt.Report) -> None:
    assert rpt.decode_report(r.raw).subject == r.subject


def _decodes_or_refuses(decode: object, data: bytes) -> None:
    try:
        decode(data)  # type: ignore[operator]
    except PeerError:
        pass


@settings(max_examples=200)
@given(st.one_of(testing.job_messages().map(lambda x: x.encode()), testing.blob_messages(),
                 testing.reports().map(lambda r: r.raw)).flatmap(testing.mutated))
def test_any_mangled_message_is_decoded_or_refused_with_a_peer_error(data: bytes) -> None:
    _decodes_or_refuses(m.decode, data)
    _decodes_or_refuses(rpt.decode_report, data)
    _decodes_or_refuses(wb.decode_reply, data)
    _decodes_or_refuses(wb.decode_get, data)
