"""Transformer benchmarks, each ratio against a baseline measured in the same run:

* ``generate``: text generation through nodes on loopback (a requester and providers on addresses
  of their own: auction, blobs, the decode loop in a worker, commitments) against the same decode
  loop over ONNX Runtime directly in this process, on the same decoder, prompts and batch, for a
  batch of about ``--seconds`` of decoding; checked (an independent checker's teacher-forced pass
  over sampled prompts) and unchecked (``--verify none``);
* ``check cost``: the teacher-forced pass over 90 sampled prompts against decoding the shard, for
  shards of 90 to 4 000 prompts (measured per prompt, here);
* ``catch``: for each generation adversary faking 5 % of prompts (or every prompt, for the model
  modes), the share of ``--trials`` shards caught: real cheated outputs and real teacher-forced
  passes, the real sampling of 90 prompts; and honest prompts refused, greedy and sampled;
* ``encode``: rows/s of an encoder embedding a tokenized text dataset through ``map`` against ONNX
  Runtime directly.

Prints tables, writes a PNG (``--png``) or prints ``--json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pnode import transformer_models as tm
from p2pnode.adversary import Adversary
from p2pnode.exec import backends, generation_jobs, model_jobs, onnx_model
from p2pnode.exec.generate_workload import GenerateWorkload, teacher_work
from p2pnode.verify import rows as row_maths
from p2pnode.verify import tokens as tk

WL = GenerateWorkload()
BIG = tm.Config(vocab=2048, dim=256, heads=4, layers=4, ffn=1024, max_positions=512, seed=2)
SMALL = tm.Config(seed=5)
MAX_NEW = 64
BATCH = 16
MODES = ("othermodel:1", "fewerlayers:1", "lowprec:1", "prompt:0.05", "fabricate:0.05", "truncate:0.05")


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [[int(t) for t in g.integers(3, vocab, size=int(k))] for k in g.integers(8, 33, size=n)]


def _job(raw: bytes, n: int, vocab: int, **kw: Any) -> generation_jobs.GenerationJob:
    return generation_jobs.prepare(raw, {}, _prompts(n, vocab, kw.pop("seed", 0)), max_new=MAX_NEW, eos=-1,
                                   batch=BATCH, **kw)


def _direct(ops: Any, job: generation_jobs.GenerationJob) -> tuple[float, Any]:
    """Seconds for the decode loop over ONNX Runtime in this process (warm session), and its output."""
    params, inputs = job.shard(0, job.rows)
    p = WL.check(params)
    t0 = time.perf_counter()
    out = WL.run(p, ops, lambda f: None, inputs)
    return time.perf_counter() - t0, out


@asynccontextmanager
async def _market(providers: int) -> AsyncIterator[Any]:
    from tests.integration.swarm import node_config, start_node

    async with trio.open_nursery() as nursery:
        provs = [(await start_node(nursery, node_config(listen=[f"/ip4/127.0.0.{71 + i}/tcp/0"], ad_interval=30.0,
                                                        ad_ttl=120.0))).node for i in range(providers)]
        req = (await start_node(nursery, node_config(listen=["/ip4/127.0.0.70/tcp/0"], provide=False, ad_interval=30.0,
                                                     ad_ttl=120.0, bootstrap=[p.addrs()[0] for p in provs]))).node
        await req.wait_until(lambda: len(req.table) >= providers, 60)
        yield req
        nursery.cancel_scope.cancel()


async def bench_generate(seconds: float) -> dict[str, Any]:
    raw = tm.decoder(BIG)
    ops = backends.OrtOps("ort-cpu")
    _direct(ops, _job(raw, BATCH, BIG.vocab))  # warm
    per_prompt = _direct(ops, _job(raw, 4 * BATCH, BIG.vocab))[0] / (4 * BATCH)
    n = max(BATCH, int(seconds / per_prompt) // BATCH * BATCH)
    out: dict[str, Any] = {"prompts": n, "max_new": MAX_NEW, "batch": BATCH,
                           "model": {"layers": BIG.layers, "dim": BIG.dim, "vocab": BIG.vocab}}
    async with _market(2) as req:
        for i, verify in enumerate(("none", "auto", "none", "auto")):  # each paired with a direct run
            job = _job(raw, n, BIG.vocab, seed=10 + i)
            direct_s, direct_out = _direct(ops, job)
            t0 = time.perf_counter()
            result = await req.maps.run(job, shard_rows=n, providers=1, max_price=10**12, deadline_s=600,
                                        verify=verify, fresh=True)
            wall = time.perf_counter() - t0
            tokens = int(result.outputs["length"].sum())
            same = bool(np.array_equal(result.outputs["tokens"], job.restore(direct_out.arrays)["tokens"]))
            key = "checked" if verify == "auto" else "unchecked"
            out.setdefault(key, []).append({"node_s": wall, "direct_s": direct_s, "tokens": tokens,
                                            "ratio": direct_s / wall, "same_tokens": same,
                                            "checked_prompts": result.checked_rows})
    for key in ("checked", "unchecked"):
        runs = out[key]
        out[key + "_ratio"] = float(np.median([r["ratio"] for r in runs]))
        out[key + "_tokens_per_s"] = float(np.median([r["tokens"] / r["node_s"] for r in runs]))
    out["direct_tokens_per_s"] = float(np.median([r["tokens"] / r["direct_s"] for r in out["unchecked"] + out["checked"]]))
    return out


def bench_check_cost() -> list[dict[str, Any]]:
    """Per prompt, here: decoding against one teacher-forced pass; the share for shards of n."""
    raw = tm.decoder(BIG)
    ops = backends.OrtOps("ort-cpu")
    job = _job(raw, 4 * BATCH, BIG.vocab, seed=3)
    _direct(ops, job)
    gen_s, out = _direct(ops, job)
    params, inputs = job.shard(0, job.rows)
    sub, sub_inputs, _ = teacher_work(WL.check(params), inputs, out, range(job.rows))
    t0 = time.perf_counter()
    WL.run(WL.check(sub), ops, lambda f: None, sub_inputs)
    teach_s = time.perf_counter() - t0
    s = row_maths.sample_size()
    return [{"prompts": n, "gen_s_per_prompt": gen_s / job.rows, "pass_s_per_prompt": teach_s / job.rows,
             "share": min(n, s) * teach_s / (n * gen_s)} for n in (90, 500, 1000, 2000, 4000)]


def _refuted(mode: str, n: int, seed: int, temperature: float = 0.0) -> np.ndarray:
    """For one cheater's job of ``n`` prompts: which prompts a teacher-forced pass refutes."""
    raw = tm.decoder(SMALL)
    job = generation_jobs.prepare(raw, {}, _prompts(n, SMALL.vocab, seed), max_new=MAX_NEW, eos=0, batch=BATCH,
                                  temperature=temperature, seed=seed)
    params, inputs = job.shard(0, job.rows)
    p = WL.check(params)
    adv, cheat, given = Adversary.parse(mode, seed=seed), False, inputs
    if adv is not None:
        p, cheat = adv.run_params("generate", p)
        given = adv.run_inputs("generate", p, inputs, cheat)
    out = WL.run(p, _ops(), lambda f: None, given)
    if adv is not None:
        out = adv.tamper("generate", p, out, cheat)
    if tk.structure(out.arrays, n, MAX_NEW, SMALL.vocab, 0, p["fp_k"]):
        return np.ones(n, bool)  # malformed: refused whole before any sample
    sub, sub_inputs, rows = teacher_work(p, inputs, out, range(n))
    ref = WL.run(WL.check(sub), _ops(), lambda f: None, sub_inputs)
    bad = np.zeros(n, bool)
    for i, _ in tk.mismatches(rows.arrays, ref.arrays, tk.TOLERANCE["float32"]):
        bad[i] = True
    return bad


_OPS: list[Any] = []


def _ops() -> Any:
    if not _OPS:
        _OPS.append(backends.OrtOps("ort-cpu"))
    return _OPS[0]


def bench_catch(trials: int, n: int = 400, jobs: int = 5) -> dict[str, Any]:
    """Each mode: ``jobs`` cheated jobs of ``n`` prompts; ``trials`` samples of 90 over them."""
    s = row_maths.sample_size()
    rng = random.Random(1)
    modes: dict[str, Any] = {}
    for mode in MODES:
        refuted = [_refuted(mode, n, seed=100 + j) for j in range(jobs)]
        caught = sum(bool(refuted[t % jobs][rng.sample(range(n), s)].any()) for t in range(trials))
        modes[mode] = {"catch": caught / trials, "trials": trials, "prompts": n,
                       "refuted_share": float(np.mean([r.mean() for r in refuted]))}
    honest = {str(t): int(_refuted("", 1000, seed=7, temperature=t).sum()) for t in (0.0, 0.8)}
    return {"modes": modes, "honest_refused_of_1000": honest, "sample": s}


async def bench_encode(seconds: float) -> dict[str, Any]:
    from p2pnode import text_data

    raw = tm.encoder(tm.Config(vocab=2048, dim=256, heads=4, layers=4, ffn=1024, max_positions=512, seed=3))
    tok = tm.tokenizer()
    lines = tm.corpus(200_000)
    sess = backends.OrtOps("ort-cpu").session(onnx_model.pack(raw))[0]
    probe, _ = text_data.encode(tok, lines[:256], ["input_ids", "attention_mask", "token_type_ids"], 128)
    t0 = time.perf_counter()
    sess.run(None, probe)
    rows = max(256, int(seconds / ((time.perf_counter() - t0) / 256)))
    docs = [lines[i % len(lines)] for i in range(rows)]
    arrays, _ = text_data.encode(tok, docs, ["input_ids", "attention_mask", "token_type_ids"], 128)
    job = model_jobs.prepare(onnx_model.pack(raw), arrays)
    t0 = time.perf_counter()
    sess.run(None, arrays)
    direct = time.perf_counter() - t0
    async with _market(2) as req:
        t0 = time.perf_counter()
        result = await req.maps.run(job, shard_rows=-(-rows // 4), providers=2, max_price=10**12, deadline_s=600,
                                    fresh=True)
        wall = time.perf_counter() - t0
    return {"rows": rows, "direct_rows_per_s": rows / direct, "node_rows_per_s": rows / wall, "ratio": direct / wall,
            "checked_rows": result.checked_rows, "providers": len(result.by_provider)}


def render(r: dict[str, Any], png: Path | None, tables: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(stderr=not tables)
    g = r["generate"]
    t = Table(title=f"generate: {g['prompts']} prompts × {g['max_new']} tokens, batch {g['batch']}, through the "
                    "node vs the same decode loop directly (medians of paired runs)")
    for col in ("", "tokens/s", "× direct"):
        t.add_column(col, justify="right")
    t.add_row("direct", f"{g['direct_tokens_per_s']:.0f}", "1.00")
    t.add_row("node, unchecked", f"{g['unchecked_tokens_per_s']:.0f}", f"{g['unchecked_ratio']:.2f}")
    t.add_row("node, checked", f"{g['checked_tokens_per_s']:.0f}", f"{g['checked_ratio']:.2f}")
    c.print(t)
    t = Table(title="the check's cost: a teacher-forced pass over 90 sampled prompts vs decoding the shard")
    for col in ("prompts", "decode ms/prompt", "pass ms/prompt", "share"):
        t.add_column(col, justify="right")
    for k in r["check_cost"]:
        t.add_row(str(k["prompts"]), f"{1000 * k['gen_s_per_prompt']:.2f}", f"{1000 * k['pass_s_per_prompt']:.2f}",
                  f"{100 * k['share']:.2f} %")
    c.print(t)
    t = Table(title=f"catch rate per adversary (sample {r['catch']['sample']}; honest prompts refused of 1000: "
                    f"{r['catch']['honest_refused_of_1000']})")
    for col in ("mode", "trials", "prompts refuted", "caught"):
        t.add_column(col, justify="right")
    for mode, m in r["catch"]["modes"].items():
        t.add_row(mode, str(m["trials"]), f"{100 * m['refuted_share']:.1f} %", f"{100 * m['catch']:.1f} %")
    c.print(t)
    e = r["encode"]
    c.print(f"encode: {e['rows']} documents, {e['node_rows_per_s']:.0f} rows/s through map on {e['providers']} "
            f"provider(s) vs {e['direct_rows_per_s']:.0f} directly ({e['ratio']:.2f} ×)")
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    ax[0].bar(["direct", "node\nunchecked", "node\nchecked"],
              [g["direct_tokens_per_s"], g["unchecked_tokens_per_s"], g["checked_tokens_per_s"]], color="#4c78a8")
    ax[0].set_ylabel("tokens/s")
    ax[0].set_title("generation throughput")
    ks = r["check_cost"]
    ax[1].plot([k["prompts"] for k in ks], [100 * k["share"] for k in ks], marker="o")
    ax[1].axhline(5, color="grey", ls="--")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("prompts per shard")
    ax[1].set_ylabel("check time, % of decoding")
    ax[1].set_title("teacher-forced check cost")
    modes = r["catch"]["modes"]
    ax[2].bar(list(modes), [100 * m["catch"] for m in modes.values()], color="#e45756")
    ax[2].axhline(99, color="grey", ls="--")
    ax[2].set_ylim(0, 105)
    ax[2].set_ylabel("% of shards caught")
    ax[2].set_title("catch rate per adversary")
    ax[2].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    c.print(f"wrote {png}")


async def _network(args: argparse.Namespace) -> dict[str, Any]:
    return {"generate": await bench_generate(args.seconds), "encode": await bench_encode(args.seconds / 2)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="decoding per generation batch (default 10 s)")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--png", type=Path, default=Path("bench-llm.png"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = trio.run(_network, args)
    result["check_cost"] = bench_check_cost()
    result["catch"] = bench_catch(args.trials)
    render(result, args.png, tables=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
