"""The fuzzing kit's strategies draw valid messages, and every decoder takes any mangling of them
either as a message or as a typed PeerError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from nacl.signing import SigningKey

from p2pnode import testing
from p2pnode.errors import PeerError
from p2pnode.wire import blob as wb
from p2pnode.wire import capacity_ad as ca
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


KEY = SigningKey(bytes(range(32)))


def _find(condition: Callable[[ca.CapacityAd], bool]) -> ca.CapacityAd:
    """An ad the strategy draws that meets ``condition`` (NoSuchExample, a failure, if it never does)."""
    return find(testing.capacity_ads(KEY), condition,
                settings=settings(max_examples=2000, database=None, phases=[Phase.generate]))  # found, not shrunk


def test_ads_cover_every_offer_kind_real_nodes_publish() -> None:
    wanted, seen = set(testing.offer_kinds()), set[tuple[str, str, str]]()

    def all_seen(ad: ca.CapacityAd) -> bool:
        seen.update((o.workload, o.backend, o.unit) for o in ca.decode_ad(testing.sign(ad, KEY)).ad.offers)
        return seen >= wanted

    with contextlib.suppress(NoSuchExample):  # the assertion names what is missing
        _find(all_seen)
    assert wanted <= seen, sorted(wanted - seen)


def test_offer_kinds_are_what_a_node_builds_into_its_ad() -> None:
    """The kinds come from the node's own sources: every workload it offers by default, on every
    backend a node may have, both units; ONNX models only on ONNX Runtime."""
    from p2pnode.exec.backends import BACKENDS, ORT_PREFIX

    kinds = set(testing.offer_kinds())
    assert ("onnx", "ort-cpu", "gflop") in kinds and ("onnx", "ort-cuda", "check") in kinds
    assert ("matmul", "cuda", "check") in kinds and ("train_step", "numpy", "gflop") in kinds
    assert not any(w == "onnx" and not b.startswith(ORT_PREFIX) for w, b, _ in kinds)
    assert {b for _, b, _ in kinds} == set(BACKENDS)


def test_ads_cover_gpus_with_busy_slots_and_full_addresses() -> None:
    ad = _find(lambda ad: any(0 < g.busy == g.slots for g in ad.gpus))
    assert ca.decode_ad(testing.sign(ad, KEY)).ad.gpus == ad.gpus
    ad = _find(lambda ad: len(ad.addrs) == ca.MAX_ADDRS and len(ad.offers) >= 8)
    assert all(a.endswith("/p2p/" + ad.peer) for a in ad.addrs)


@given(testing.capacity_ads(KEY))
def test_every_drawn_ad_round_trips_signed(ad: ca.CapacityAd) -> None:
    assert ca.decode_ad(testing.sign(ad, KEY)).ad == ad
