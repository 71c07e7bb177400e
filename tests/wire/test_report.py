from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.errors import CodecError, PeerError, SignatureError
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import peer_id_from_public_key
from p2pnode.wire.report import decode_report, make_report

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 6)]
IDS = [peer_id_from_public_key(bytes(k.verify_key)) for k in KEYS]
REQUESTER = KEYS[0]


def result(provider: int, job: bytes = b"j" * 16, digest: bytes | None = None) -> bytes:
    return m.make_result(job, KEYS[provider], requester=IDS[0], provider=IDS[provider], nonce=b"n" * 16,
                         digest=digest or os.urandom(32), output=b"", kernel_ms=1, backend="numpy").raw


def test_a_cheat_reports_witnesses_are_a_checker_and_referee_that_agree_against_the_subject() -> None:
    right, wrong = b"r" * 32, b"w" * 32

    def witnesses(*digests: bytes, jobs: tuple[bytes, ...] = (b"j" * 16,) * 3) -> tuple[bytes, ...]:
        evidence = tuple(result(i + 1, job, d) for i, (job, d) in enumerate(zip(jobs, digests)))
        return make_report(REQUESTER, subject=IDS[1], t_ms=1, pos=0, neg=10, verdict="cheat", job=b"j" * 16,
                           evidence=evidence).witnesses

    assert witnesses(wrong, right, right) == (IDS[2], IDS[3])
    assert witnesses(right, right, right) == ()  # the subject agreed: no witness against it
    assert witnesses(wrong, right, b"x" * 32) == ()  # checker and referee disagree
    assert witnesses(wrong, right, right, jobs=(b"j" * 16, b"j" * 16, b"k" * 16)) == ()


def test_opinion_round_trips() -> None:
    r = make_report(REQUESTER, subject=IDS[1], t_ms=5, pos=2.5, neg=0.25)
    back = decode_report(r.raw)
    assert (back.reporter, back.subject, back.pos, back.neg, back.verdict) == (IDS[0], IDS[1], 2.5, 0.25, "opinion")


def test_cheat_reports_need_three_signed_results_with_the_subjects_first() -> None:
    good = (result(1), result(2), result(3))
    r = make_report(REQUESTER, subject=IDS[1], t_ms=1, pos=0, neg=10, verdict="cheat", job=b"j" * 16, evidence=good)
    assert decode_report(r.raw).evidence == good
    for evidence, why in [((result(1), result(2)), "three"), ((result(2), result(1), result(3)), "subject"),
                          ((result(1), result(2), result(2)), "three providers")]:
        with pytest.raises(CodecError, match=why):
            make_report(REQUESTER, subject=IDS[1], t_ms=1, pos=0, neg=1, verdict="cheat", evidence=evidence)
    forged = bytearray(result(1))
    forged[-3] ^= 1
    with pytest.raises(SignatureError):
        make_report(REQUESTER, subject=IDS[1], t_ms=1, pos=0, neg=1, verdict="cheat",
                    evidence=(bytes(forged), result(2), result(3)))


def test_self_reports_and_evidence_on_opinions_are_refused() -> None:
    with pytest.raises(CodecError, match="itself"):
        make_report(REQUESTER, subject=IDS[0], t_ms=1, pos=1, neg=0)
    with pytest.raises(CodecError, match="only a cheat"):
        make_report(REQUESTER, subject=IDS[1], t_ms=1, pos=1, neg=0, evidence=(result(1),))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_peer_errors(data: bytes) -> None:
    try:
        decode_report(data)
    except PeerError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_any_flipped_bit_in_a_report_is_refused(pos: int, bit: int) -> None:
    raw = make_report(REQUESTER, subject=IDS[1], t_ms=7, pos=3, neg=1).raw
    i = pos % len(raw)
    bad = raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1:]
    with pytest.raises(PeerError):
        decode_report(bad)
