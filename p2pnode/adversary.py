"""Dishonest provider behaviours, for tests, scenarios and benchmarks of the checks.

Selected on a provider with the ``adversary`` config key, ``MODE`` or ``MODE:X``:

* ``garbage:F``  -- on a fraction F of jobs (default 1), every output array is random noise (for
  ``generate``, made-up tokens for every prompt, well formed: only the check can tell);
* ``perturb:F``  -- on a fraction F, one element is moved just past the workload's tolerance
  (by 1 for exact int8, else by 1.5 × tolerance × the array's norm): the subtlest wrong answer
  the comparison rule must catch;
* ``replay:F``   -- on a fraction F, the output of an earlier job of the same workload is returned
  (when shapes match), as a provider that skips the work would;
* ``lowprec:F``  -- on a fraction F, computes at lower precision: fp32 matmul runs as fp16, other
  fp32 outputs are rounded to fp16;
* ``skip:F``     -- on every job, fakes a fraction F of the output's rows (noise in place of the
  model's answer), as a provider that runs only part of a dataset shard would; on a ``train`` job,
  skips a fraction F of its steps (at least one: the state stays as it was);
* ``scale:X``    -- (``train``) returns weights whose change over the round is X times what it
  computed (default 2), committing to them as its last step;
* ``stale``      -- (``train``) trains from the state of the job before (old weights), while
  committing to the state it was sent as its start;
* ``lr:X``       -- (``train``) trains with X times the learning rate asked for (default 2);
* ``overclaim:X`` -- advertises X times its measured speed (honest results);
* ``flood:R``    -- publishes its capacity ad R times a second, far past what peers accept (honest
  results): the rate limits and bans of capacity gossip are what stop it;
* ``stall``      -- accepts jobs and never finishes them, while still sending progress.
* on ``generate`` jobs (:mod:`p2pnode.adversary_text`): ``othermodel:F``, ``fewerlayers:F``,
  ``lowprec:F`` and ``halfprec:F`` run another model, a shallower one, the model's weights at
  bfloat16, or the whole model computed in float16, on a fraction F of jobs; ``prompt:F``, ``fabricate:F`` and ``truncate:F``, on every job, alter the prompt of, make up
  the tokens of, or cut short the generation of a fraction F of its prompts.
* ``poison:N``   -- serves every market sync with N validly signed ads of made-up providers (fresh
  identities, price 1, 10⁹ GFLOP/s, the longest TTL, all naming one third party's address,
  :data:`POISON_ADDR`) before its own table: market poisoning. Admission and the requester's
  choice of whom to ask are what stop it (``specs/capacity-ad.md``, Admission).

The digest is always recomputed over the tampered output, so only a real check catches it. On a
``train`` job (``garbage``: noise for weights after steps that did nothing; ``lowprec``: every state
rounded to fp16; ``replay``: the job before's output) the cheater commits to what it returns, step
by step, so only a re-run step catches it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pnode import adversary_text
from p2pnode.errors import ConfigError
from p2pnode.exec.workloads import TOLERANCE, Output

MODES = ("garbage", "perturb", "replay", "lowprec", "skip", "overclaim", "stall", "flood", "poison", "othermodel",
         "fewerlayers", "halfprec", "prompt", "fabricate", "truncate", "scale", "stale", "lr")
_PER_JOB = ("garbage", "perturb", "replay", "lowprec", "othermodel", "fewerlayers", "halfprec")
_PER_ROW = ("skip", "prompt", "fabricate", "truncate")
TRAIN_ONLY = ("scale", "stale", "lr")
POISON_ADDR = "/ip4/127.0.0.9/tcp/9"  # the third party a poisoner's made-up providers point at
MAX_POISON = 1023
REL_TOLERANCE = {"infer": 1e-4, "train_step": 1e-4}


@dataclass
class Adversary:
    mode: str
    x: float = 1.0  # fraction of jobs, or the over-claim factor
    seed: int = 0
    rng: random.Random = field(init=False)
    _last: dict[str, Output] = field(default_factory=dict)
    _stale: Any = None  # the state the train job before started from
    tampered: int = 0
    jobs: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> Adversary | None:
        if not spec:
            return None
        mode, _, arg = spec.partition(":")
        if mode not in MODES:
            raise ConfigError(f"adversary: {mode!r} is not one of {', '.join(MODES)}")
        try:
            x = float(arg) if arg else {"overclaim": 10.0, "flood": 20.0, "poison": 1000.0, "scale": 2.0,
                                        "lr": 2.0}.get(mode, 1.0)
        except ValueError:
            raise ConfigError(f"adversary: {arg!r} is not a number") from None
        if mode == "overclaim" and x < 1:
            raise ConfigError("adversary overclaim:X needs X >= 1")
        if mode == "flood" and not 0 < x <= 1000:
            raise ConfigError("adversary flood:R needs R ads per second in (0, 1000]")
        if mode == "poison" and not (x == int(x) and 1 <= x <= MAX_POISON):
            raise ConfigError(f"adversary poison:N needs N made-up providers in [1, {MAX_POISON}]")
        if mode in ("scale", "lr") and not (0 < x <= 1000 and x != 1):
            raise ConfigError(f"adversary {mode}:X needs a factor X in (0, 1000] other than 1")
        if mode not in ("overclaim", "flood", "poison", "scale", "lr") and not 0 <= x <= 1:
            raise ConfigError(f"adversary {mode}:F needs a fraction F in [0, 1]")
        return cls(mode, x, seed)

    @property
    def speed_factor(self) -> float:
        return self.x if self.mode == "overclaim" else 1.0

    @property
    def stalls(self) -> bool:
        return self.mode == "stall"

    @property
    def flood_rate(self) -> float:
        """Ads per second to publish (0: the honest schedule)."""
        return self.x if self.mode == "flood" else 0.0

    def poison(self, now: float) -> list[bytes]:
        """The made-up providers' ads to serve in a market sync at ``now`` (``poison:N``)."""
        if self.mode != "poison":
            return []
        return poisoned_ads(int(self.x), now, seed=self.seed, addr=POISON_ADDR)

    def run_params(self, workload: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Parameters to actually run with, and whether this job is one to cheat on."""
        self.jobs += 1
        cheat = (self.mode in _PER_JOB and self.rng.random() < self.x) or (self.mode in _PER_ROW and self.x > 0) or \
            (self.mode in TRAIN_ONLY and workload == "train")
        p = dict(params)
        if cheat and self.mode == "lr":
            p["lr"] = float(p["lr"]) * self.x
        if cheat and self.mode == "lowprec" and workload == "matmul" and p.get("dtype") == "fp32":
            p["dtype"] = "fp16"
        return p, cheat

    def run_inputs(self, workload: str, params: Mapping[str, Any], arrays: dict[str, np.ndarray] | None,
                   cheat: bool) -> dict[str, np.ndarray] | None:
        """The inputs to actually run on: a generation cheater's other model or altered prompts."""
        if not cheat or workload != "generate" or arrays is None:
            return arrays
        return adversary_text.cheat_inputs(self.mode, self.x, params, arrays, self.rng)

    def tamper(self, workload: str, params: Mapping[str, Any], output: Output, cheat: bool,
               inputs: Mapping[str, np.ndarray] | None = None) -> Output:
        """The output to return in place of the honest ``output`` (``inputs``: the job's, which a
        train job's cheat runs again from)."""
        honest = output
        if cheat and workload == "generate" and self.mode in ("garbage", *adversary_text.PROMPT_MODES,
                                                              *adversary_text.MODEL_MODES):
            self.tampered += 1  # garbage, for generation: every prompt's tokens made up, well formed
            mode, x = ("fabricate", 1.0) if self.mode == "garbage" else (self.mode, self.x)
            return Output(adversary_text.cheat_rows(mode, x, params, output.arrays, self.rng), dict(output.extra))
        if cheat and workload == "train" and self.mode in ("garbage", "skip", "lowprec", *TRAIN_ONLY):
            self.tampered += 1
            output = self._train(params, output, inputs or {})
        elif cheat and hasattr(self, "_" + self.mode):  # a mode of generation only cheats on generation
            self.tampered += 1
            output = getattr(self, "_" + self.mode)(workload, params, output)
        self._last[workload] = honest
        return output

    def _garbage(self, workload: str, params: Mapping[str, Any], out: Output) -> Output:
        g = np.random.default_rng(self.rng.getrandbits(64))
        arrays = {}
        for k, a in out.arrays.items():
            if a.dtype.kind in "iu":
                arrays[k] = g.integers(-1000, 1000, size=a.shape).astype(a.dtype)
            else:
                arrays[k] = g.standard_normal(a.shape).astype(a.dtype)
        return Output(arrays, dict(out.extra))

    def _perturb(self, workload: str, params: Mapping[str, Any], out: Output) -> Output:
        arrays = {k: np.array(a, copy=True) for k, a in out.arrays.items()}
        name = sorted(arrays)[0]
        a = arrays[name]
        flat = a.reshape(-1)
        i = self.rng.randrange(flat.size)
        if a.dtype.kind in "iu":
            flat[i] += 1
        else:
            tol = TOLERANCE.get(str(params.get("dtype")), 0.0) if workload == "matmul" else 0.0
            tol = tol or REL_TOLERANCE.get(workload, 1e-4)
            flat[i] += np.asarray(1.5 * tol * float(np.linalg.norm(a.astype(np.float64))) + 1e-6, dtype=a.dtype)
        return Output(arrays, dict(out.extra))

    def _skip(self, workload: str, params: Mapping[str, Any], out: Output) -> Output:
        arrays = {k: np.array(a, copy=True) for k, a in out.arrays.items()}
        n = min((len(a) for a in arrays.values() if a.ndim), default=0)
        fake = self.rng.sample(range(n), max(1, round(self.x * n))) if n else []
        g = np.random.default_rng(self.rng.getrandbits(64))
        for a in arrays.values():
            if a.ndim and fake:
                shape = (len(fake), *a.shape[1:])
                a[fake] = g.integers(-1000, 1000, size=shape) if a.dtype.kind in "iu" else g.standard_normal(shape)
        return Output(arrays, dict(out.extra))

    def _train(self, params: Mapping[str, Any], out: Output, inputs: Mapping[str, np.ndarray]) -> Output:
        """The run again, cheating as the mode says, committing to what it returns."""
        from p2pnode.exec import train_model as tm
        from p2pnode.exec.train_workload import finish

        if self.mode == "lr":  # already run with the other rate: consistent as it is
            return out
        spec = tm.parse(params["model"])
        state0 = np.asarray(inputs["state"], dtype=np.float32)
        start, stale = state0, self._stale
        self._stale = state0
        first, steps, n = int(params["first"]), int(params["steps"]), spec.params
        last = first + steps - 1
        g = np.random.default_rng(self.rng.getrandbits(64))
        if self.mode == "stale":
            start = stale if stale is not None and stale.shape == state0.shape else \
                state0 + g.standard_normal(state0.shape).astype(np.float32) * np.float32(0.01)
        skipped = set(self.rng.sample(range(first, last + 1), max(1, round(self.x * steps)))) \
            if self.mode == "skip" else set()

        def hook(t: int, before: np.ndarray, after: np.ndarray) -> np.ndarray:
            if self.mode == "skip" and t in skipped:
                return before
            if self.mode == "garbage":
                if t < last:
                    return before
                after = before.copy()
                after[:n] = g.standard_normal(n).astype(np.float32)
            elif self.mode == "scale" and t == last:
                after = after.copy()
                after[:n] = state0[:n] + np.float32(self.x) * (after[:n] - state0[:n])
            elif self.mode == "lowprec":
                with np.errstate(over="ignore"):
                    after = after.astype(np.float16).astype(np.float32)
            return after

        states, losses = tm.run(spec, start, inputs["x"], inputs["y"], first=first, steps=steps,
                                batch=int(params["batch"]), seed=int(params["seed"]), lr=float(params["lr"]),
                                wd=float(params["wd"]), hook=hook)
        return finish(spec, state0, states, losses)

    def _replay(self, workload: str, params: Mapping[str, Any], out: Output) -> Output:
        old = self._last.get(workload)
        if old is None or {k: v.shape for k, v in old.arrays.items()} != {k: v.shape for k, v in out.arrays.items()}:
            return self._garbage(workload, params, out)  # nothing to replay: no work done either
        return old

    def _lowprec(self, workload: str, params: Mapping[str, Any], out: Output) -> Output:
        arrays = {}
        for k, a in out.arrays.items():
            if workload == "matmul" and params.get("dtype") == "fp32":
                arrays[k] = a.astype(np.float32)  # computed in fp16 (see run_params)
            elif a.dtype == np.float32:
                arrays[k] = a.astype(np.float16).astype(np.float32)
            else:
                arrays[k] = a
        return Output(arrays, dict(out.extra))


def poisoned_ads(n: int, now: float, *, seed: int = 0, addr: str = POISON_ADDR, price: int = 1) -> list[bytes]:
    """``n`` validly signed capacity ads of made-up providers (identities drawn from ``seed``), as a
    market poisoner serves them: the cheapest price, the highest speed an ad may claim, the longest
    life, every workload, all at ``addr``. Fresh each call (``seq`` and times from ``now``)."""
    from nacl.signing import SigningKey

    from p2pnode.market.pacing import MAX_TTL_S
    from p2pnode.wire.capacity_ad import MAX_GFLOPS, CapacityAd, CpuInfo, Offer, encode_ad
    from p2pnode.wire.peer_id import peer_id_from_public_key

    g = random.Random(seed)
    offers = tuple(Offer(w, "numpy", price, "gflop") for w in ("matmul", "infer", "train_step", "onnx"))
    out = []
    for _ in range(n):
        key = SigningKey(g.randbytes(32))
        ad = CapacityAd(peer_id=peer_id_from_public_key(bytes(key.verify_key)), seq=int(now * 1000),
                        issued_at_ms=int(now * 1000), expires_at_ms=int((now + MAX_TTL_S) * 1000),
                        cpu=CpuInfo("made up", 64, 1 << 40, 1 << 40), offers=offers, addrs=(addr,),
                        speed=(("matmul_f32_numpy", MAX_GFLOPS), ("matmul_i8_numpy", MAX_GFLOPS)))
        out.append(encode_ad(ad, key))
    return out
