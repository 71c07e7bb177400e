"""Connect a requester machine to provider machines back to back (like h11's ConnectionPair), so a
test reads like the conversation it checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from nacl.signing import SigningKey

from p2pnode.protocol.job_provider import ProviderJob
from p2pnode.protocol.job_requester import RequesterJob, Step
from p2pnode.wire import job as m
from p2pnode.wire.peer_id import peer_id_from_public_key

T0 = 1_800_000_000.0


def identity(i: int) -> tuple[SigningKey, bytes]:
    key = SigningKey(bytes([i + 1]) * 32)
    return key, peer_id_from_public_key(bytes(key.verify_key))


@dataclass
class Conversation:
    requester: RequesterJob
    provider_keys: dict[bytes, SigningKey]
    providers: dict[bytes, ProviderJob] = field(default_factory=dict)
    wire: list[tuple[str, bytes, m.Message]] = field(default_factory=list)  # ("->"/"<-", peer, msg)

    @classmethod
    def make(cls, n: int = 3, *, deadline_s: float = 60.0, max_price: int = 1000, reserve: int = 0,
             **kw: object) -> Conversation:
        """``n`` providers, the last ``reserve`` of them held in reserve."""
        key, me = identity(0)
        pks = dict(identity(i)[::-1] for i in range(1, n + 1))
        rfb = m.RequestForBids(b"J" * 16, "matmul", {"m": 8, "n": 8, "k": 8}, me, b"N" * 16, max_price,
                               int((T0 + deadline_s) * 1000), 0, "", "none")
        peers = list(pks)
        return cls(RequesterJob(me, key, rfb, peers[:n - reserve], T0, reserves=peers[n - reserve:],  # type: ignore[arg-type]
                                **kw), pks)

    def deliver(self, step: Step, now: float) -> None:
        """Carry the requester's messages (encoded and decoded, as on the wire) to providers."""
        for peer, msg in step.send:
            msg = m.decode(msg.encode())
            self.wire.append(("->", peer, msg))
            if isinstance(msg, m.RequestForBids):
                self.providers[peer] = ProviderJob(peer, msg, now)
            elif peer in self.providers and not self.providers[peer].terminal:
                self.providers[peer].receive(msg, now)

    def reply(self, peer: bytes, msg: m.Message, now: float) -> Step:
        msg = m.decode(msg.encode())
        self.wire.append(("<-", peer, msg))
        step = self.requester.receive(peer, msg, now)
        self.deliver(step, now)
        return step

    def result_for(self, peer: bytes, now: float, digest: bytes = b"d" * 32) -> m.Result:
        r = self.requester
        return m.make_result(r.job, self.provider_keys[peer], requester=r.me, provider=peer, nonce=r.rfb.nonce,
                             digest=digest, output=b"out", kernel_ms=5, backend="numpy")
