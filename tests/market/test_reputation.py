from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pnode.market.reputation import Opinion, Reputation
from p2pnode.wire.peer_id import peer_id_from_public_key

DAY = 86400.0


def peer(i: int) -> bytes:
    return peer_id_from_public_key(bytes(SigningKey(bytes([i]) * 32).verify_key))


ME = peer(0)


def test_unknown_peer_scores_one_half_with_the_widest_uncertainty() -> None:
    rep = Reputation(ME)
    s = rep.score(peer(1), 0.0)
    assert s.score == 0.5
    for _ in range(20):
        rep.observe(peer(1), "checked_ok", 0.0)
    t = rep.score(peer(1), 0.0)
    assert t.score > 0.9 and t.uncertainty < s.uncertainty / 2
    assert t.streak == 20


def test_one_caught_cheat_outweighs_a_long_clean_record_and_resets_the_streak() -> None:
    rep = Reputation(ME)
    for _ in range(5):
        rep.observe(peer(1), "checked_ok", 0.0)
    rep.observe(peer(1), "cheat", 0.0)
    s = rep.score(peer(1), 0.0)
    assert s.score < 0.4 and s.streak == 0 and s.cheats == 1
    rep.observe(peer(2), "cheat", 0.0)
    assert rep.distrusted(peer(2), 0.0)
    # a caught cheat excludes even a peer with a long record, for one half-life
    for _ in range(200):
        rep.observe(peer(3), "checked_ok", 0.0)
    rep.observe(peer(3), "cheat", 1.0)
    assert rep.score(peer(3), 1.0).score > 0.9
    assert rep.distrusted(peer(3), 1.0)
    assert not rep.distrusted(peer(3), 1.0 + rep.half_life_s)


def test_evidence_decays_with_the_half_life() -> None:
    rep = Reputation(ME, half_life_s=DAY)
    rep.observe(peer(1), "cheat", 0.0)
    assert rep.score(peer(1), 0.0).own_neg == 10
    assert abs(rep.score(peer(1), DAY).own_neg - 5) < 1e-9
    assert abs(rep.score(peer(1), 3 * DAY).own_neg - 1.25) < 1e-9


def test_reports_from_a_peer_we_trust_move_a_strangers_score() -> None:
    rep = Reputation(ME)
    honest, stranger = peer(1), peer(2)
    for _ in range(10):
        rep.observe(honest, "checked_ok", 0.0)
    assert rep.report(honest, stranger, Opinion(pos=0.0, neg=20.0, t=0.0))
    s = rep.score(stranger, 0.0)
    assert s.hearsay_neg > 5 and s.score < 0.3
    assert rep.trust(0.0)[honest] > 0.5


def test_a_colluding_clique_praising_itself_gains_nothing() -> None:
    rep = Reputation(ME)
    honest = [peer(i) for i in range(1, 4)]
    clique = [peer(i) for i in range(10, 16)]
    for h in honest:
        for _ in range(3):
            rep.observe(h, "checked_ok", 0.0)
    for a in clique:
        for b in clique:
            if a != b:
                rep.report(a, b, Opinion(pos=1000.0, neg=0.0, t=0.0))
        for h in honest:  # and slander the honest peers
            rep.report(a, h, Opinion(pos=0.0, neg=1000.0, t=0.0))
    trust = rep.trust(0.0)
    assert all(trust.get(c, 0.0) < 1e-6 for c in clique)
    ranked = [s.peer for s in rep.table(0.0)]
    assert set(ranked[: len(honest)]) == set(honest)
    assert all(rep.score(c, 0.0).score == 0.5 for c in clique)  # unknown, not lifted
    assert all(rep.score(h, 0.0).hearsay_neg == 0 for h in honest)  # slander weighs nothing


def test_pretrusted_reporters_anchor_trust_without_own_history() -> None:
    anchor, stranger = peer(1), peer(2)
    rep = Reputation(ME, pretrusted=frozenset({anchor}))
    rep.report(anchor, stranger, Opinion(pos=10.0, neg=0.0, t=0.0))
    assert rep.trust(0.0)[anchor] > 0.9
    assert rep.score(stranger, 0.0).score > 0.7


def test_a_reporter_cannot_report_on_itself_and_old_reports_do_not_replace_new_ones() -> None:
    rep = Reputation(ME)
    assert not rep.report(peer(1), peer(1), Opinion(100, 0, 0))
    assert rep.report(peer(1), peer(2), Opinion(1, 0, 10))
    assert not rep.report(peer(1), peer(2), Opinion(100, 0, 5))
    assert rep.reports[peer(1)][peer(2)].pos == 1


def test_tables_stay_bounded() -> None:
    rep = Reputation(ME, max_peers=10, max_reporters=3, max_subjects_per_reporter=2)
    for i in range(1, 40):
        rep.observe(peer(i), "accepted", 0.0)
        rep.report(peer(i), peer(i + 1), Opinion(1, 0, 0))
        rep.report(peer(1), peer(i + 2), Opinion(1, 0, 0))
    assert len(rep.own) <= 10 and len(rep.reports) <= 3 and len(rep.reports[peer(1)]) <= 2


@given(st.lists(st.tuples(st.sampled_from(["accepted", "failure", "checked_ok", "cheat"]), st.integers(0, 3)),
                max_size=20),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 20), st.floats(0, 20)), max_size=10))
def test_the_quick_mean_is_the_scores_mean(own: list[tuple[str, int]], reports: list[tuple[int, int, float, float]]) -> None:
    me = b"me"
    peers = [bytes([i]) * 4 for i in range(4)]
    rep = Reputation(me)
    for what, i in own:
        rep.observe(peers[i], what, 100.0)
    for r, subject, pos, neg in reports:
        rep.report(peers[r], peers[subject], Opinion(pos, neg, 100.0))
    for p in peers:
        assert abs(rep.mean(p, 200.0) - rep.score(p, 200.0).score) < 1e-12


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 20), st.floats(0, 20),
                          st.floats(0, 400)), min_size=1, max_size=12),
       st.lists(st.floats(400, 5 * DAY), min_size=1, max_size=4))
def test_hearsay_read_again_later_is_what_a_fresh_reading_says(reports: list[tuple[int, int, float, float, float]],
                                                             times: list[float]) -> None:
    """A score read and then read again later (what reporters said kept and decayed) equals a
    reading from scratch at that time, also after new reports came in between."""
    peers = [bytes([i]) * 4 for i in range(4)]
    rep = Reputation(b"me", trust_refresh_s=1e9)  # one trust throughout: only the reports change
    for i, p in enumerate(peers):  # each reporter trusted, some more than others
        for _ in range(i + 1):
            rep.observe(p, "checked_ok", 0.0)
    half = len(reports) // 2
    for part in (reports[:half], reports[half:]):
        for r, subject, pos, neg, t in part:
            rep.report(peers[r], peers[subject], Opinion(pos, neg, t))
        for now in sorted(times):
            kept = [rep.score(p, now) for p in peers]
            caught = [rep._hearsay_of(p, rep.trust(now), now)[2] for p in peers]
            rep._hearsay.clear()
            rep._hearsay_vec = None  # every subject summed one at a time, reporter by reporter
            for a, c, p in zip(kept, caught, peers):
                b = rep.score(p, now)
                assert abs(a.hearsay_pos - b.hearsay_pos) <= 1e-9 * (1 + b.hearsay_pos), (a, b)
                assert abs(a.hearsay_neg - b.hearsay_neg) <= 1e-9 * (1 + b.hearsay_neg), (a, b)
                assert c == rep._hearsay_of(p, rep.trust(now), now)[2]


def _worked_with(rep: Reputation, peers: list[bytes], times: int = 2) -> None:
    for p in peers:
        for _ in range(times):
            rep.observe(p, "checked_ok", 0.0)


def test_a_reporter_worked_with_weighs_fully_however_large_the_market() -> None:
    """Trust is shared out over every peer this node worked with, so against this node's own it
    shrinks as the market grows; a reporter as trusted as the median of those still counts fully."""
    rep = Reputation(ME)
    providers = [peer(i) for i in range(1, 251)]
    _worked_with(rep, providers)
    stranger = peer(255)
    rep.report(providers[0], stranger, Opinion(pos=0.0, neg=10.0, t=0.0))
    assert rep.trust(0.0)[providers[0]] < 0.01  # of this node's own
    assert rep.weight(providers[0], rep.trust(0.0)) == 1.0
    assert abs(rep.score(stranger, 0.0).hearsay_neg - 5.0) < 1e-9


def test_requesters_vouched_for_by_the_providers_they_paid_share_the_cheaters_they_caught() -> None:
    """Requesters do no work, so only the providers they paid vouch for them; through those vouches
    their catches reach this node, and two of them exclude a cheater it never met. One accuser is
    not enough, and requesters nobody vouches for weigh nothing."""
    providers = [peer(i) for i in range(1, 101)]
    first, second, cheater = peer(200), peer(201), peer(202)

    def market(vouched: bool, accusers: list[bytes]) -> Reputation:
        rep = Reputation(ME)
        _worked_with(rep, providers)
        if vouched:
            for p in providers:
                for r in (first, second):
                    rep.report(p, r, Opinion(pos=0.5, neg=0.0, t=0.0))
        for r in accusers:
            rep.report(r, cheater, Opinion(pos=3.0, neg=10.0, t=0.0))
        return rep

    assert market(True, [first, second]).distrusted(cheater, 1.0)
    assert not market(True, [first]).distrusted(cheater, 1.0)
    assert not market(False, [first, second]).distrusted(cheater, 1.0)
    assert market(False, [first, second]).score(cheater, 1.0).hearsay_neg == 0


def test_a_cheat_report_weighs_as_much_as_its_witnesses_when_the_reporter_is_unknown() -> None:
    rep = Reputation(ME)
    checker, referee, reporter, subject = peer(1), peer(2), peer(3), peer(4)
    _worked_with(rep, [checker, referee])
    rep.report(reporter, subject, Opinion(pos=0.0, neg=20.0, t=0.0))
    assert rep.score(subject, 0.0).hearsay_neg == 0  # nobody vouches for the reporter
    rep.report(reporter, subject, Opinion(pos=0.0, neg=20.0, t=1.0, witnesses=(checker, referee)))
    assert abs(rep.score(subject, 1.0).hearsay_neg - 10.0) < 1e-6
    stranger = peer(5)  # one witness this node does not know: the pair weighs as the less trusted
    rep.report(reporter, subject, Opinion(pos=0.0, neg=20.0, t=2.0, witnesses=(checker, stranger)))
    assert rep.score(subject, 2.0).hearsay_neg == 0


def test_a_provider_vouches_for_a_requester_at_its_first_payment_then_hourly() -> None:
    from p2pnode.market.reputation import VOUCH_EVERY_S

    rep = Reputation(ME)
    assert rep.vouch_due(peer(1), 10.0)
    assert not rep.vouch_due(peer(1), 11.0)
    assert not rep.vouch_due(peer(1), 10.0 + VOUCH_EVERY_S - 1)
    assert rep.vouch_due(peer(1), 10.0 + VOUCH_EVERY_S)
    assert not rep.vouch_due(ME, 10.0)
