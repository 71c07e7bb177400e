"""Reports on ``p2pnode/reports/1``: a peer's signed opinion of another peer (pure).

::

    report = envelope(domain "p2pnode/report/1\\n", body)
    body   = {v: 1, reporter: peer, subject: peer, t: uint (ms), pos: uint, neg: uint,
              verdict: "opinion" | "cheat", job: bstr .size (0 / 16), evidence: [* bstr]}

``pos`` and ``neg`` are the reporter's decayed evidence about the subject in thousandths (see
``specs/reputation.md``). A ``cheat`` report carries the dispute's evidence: exactly three signed
results (the subject's, the checker's, the referee's) from three different providers, the first
signed by the subject. Every signature is checked here; whether the subject really was wrong
cannot be checked without re-running the job, which is why receivers weigh reports by their trust
in the reporter, or, where the checker and the referee signed one output digest and the subject
another, by their trust in those two witnesses (``Report.witnesses``, ``specs/reputation.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.signing import SigningKey

from p2pnode.errors import CodecError
from p2pnode.wire import codec, envelope
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import PEER_ID_LEN, peer_id_from_public_key, public_key_from_peer_id

DOMAIN = b"p2pnode/report/1\n"
VERSION = 1
MAX_REPORT = 3 * m.MAX_MESSAGE + 4096
MAX_EVIDENCE_UNITS = 10**12  # thousandths of evidence units
VERDICTS = ("opinion", "cheat")


@dataclass(frozen=True)
class Report:
    reporter: bytes
    subject: bytes
    t_ms: int
    pos: float
    neg: float
    verdict: str = "opinion"
    job: bytes = b""
    evidence: tuple[bytes, ...] = ()
    raw: bytes = b""
    # a cheat report's checker and referee, where both signed one output digest and the subject
    # another: two providers that each vouch, under their own signature, against the subject
    witnesses: tuple[bytes, ...] = ()


def make_report(key: SigningKey, *, subject: bytes, t_ms: int, pos: float, neg: float,
                verdict: str = "opinion", job: bytes = b"", evidence: tuple[bytes, ...] = ()) -> Report:
    reporter = peer_id_from_public_key(bytes(key.verify_key))
    body = {"v": VERSION, "reporter": reporter, "subject": subject, "t": t_ms,
            "pos": _units(pos), "neg": _units(neg), "verdict": verdict, "job": job, "evidence": list(evidence)}
    raw = envelope.seal(DOMAIN, codec.encode(body), key)
    return decode_report(raw)


def _units(x: float) -> int:
    return max(0, min(MAX_EVIDENCE_UNITS, round(x * 1000)))


def decode_report(raw: object) -> Report:
    """Decode and verify a report; anything wrong raises a typed ``PeerError``."""
    env = envelope.unwrap(raw, max_size=MAX_REPORT)
    f = codec.Fields(codec.decode(env.body, max_size=MAX_REPORT), "report")
    if f.uint("v", maximum=255) != VERSION:
        raise CodecError("report.v: unsupported version")
    reporter = f.blob("reporter", max_len=PEER_ID_LEN, exact=True)
    subject = f.blob("subject", max_len=PEER_ID_LEN, exact=True)
    envelope.verify(DOMAIN, env, public_key_from_peer_id(reporter))
    public_key_from_peer_id(subject)
    if subject == reporter:
        raise CodecError("report: a peer cannot report on itself")
    verdict = f.text("verdict", max_len=16)
    if verdict not in VERDICTS:
        raise CodecError(f"report.verdict: {verdict!r} is not one of {VERDICTS}")
    job = f.blob("job", max_len=m.JOB_ID_LEN)
    if job and len(job) != m.JOB_ID_LEN:
        raise CodecError("report.job: expected a 16-byte job id")
    evidence = f.array("evidence", max_items=3)
    if not all(isinstance(e, bytes) for e in evidence):
        raise CodecError("report.evidence: expected byte strings")
    witnesses: tuple[bytes, ...] = ()
    if verdict == "cheat":
        witnesses = _check_evidence(subject, reporter, evidence)
    elif evidence:
        raise CodecError("report: only a cheat verdict carries evidence")
    return Report(reporter, subject, f.uint("t", maximum=m.MAX_U63),
                  f.uint("pos", maximum=MAX_EVIDENCE_UNITS) / 1000, f.uint("neg", maximum=MAX_EVIDENCE_UNITS) / 1000,
                  verdict, job, tuple(evidence), bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b"",
                  witnesses)


def _check_evidence(subject: bytes, reporter: bytes, evidence: list[bytes]) -> tuple[bytes, ...]:
    """Check a cheat report's three results; the witnesses (checker, referee) where the two agree
    on an output digest that the subject's differs from, else none."""
    if len(evidence) != 3:
        raise CodecError("report: a cheat verdict needs three signed results")
    results = [m.decode_signed("result", e) for e in evidence]
    providers = [r.body["provider"] for r in results]
    if providers[0] != subject:
        raise CodecError("report: the first result is not the subject's")
    if len(set(providers)) != 3 or reporter in providers:
        raise CodecError("report: the results must come from three providers other than the reporter")
    if any(r.body["requester"] != reporter for r in results):
        raise CodecError("report: the results were not made for the reporter")
    subject_r, checker, referee = results
    if len({r.job for r in results}) == 1 and checker.body["digest"] == referee.body["digest"] \
            != subject_r.body["digest"]:
        return (providers[1], providers[2])
    return ()
