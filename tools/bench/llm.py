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
  Runtime directly;
* ``genai`` (when ``onnxruntime-genai`` is installed; the section says so when it is not): the
  node's decode loop against ONNX Runtime GenAI's generator on the same decoder file, prompts and
  batch: GenAI's own greedy loop, and GenAI driven as the node needs it (each token chosen by the
  node's seeded rule, forced back through ``set_logits``, and the hidden state read for the
  fingerprints); prompts of one length, since GenAI does not mask a batch's left padding (the
  section measures how many tokens then still agree).

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
MODES = ("othermodel:1", "fewerlayers:1", "lowprec:1", "halfprec:1", "prompt:0.05", "fabricate:0.05", "truncate:0.05")


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


def _genai_generate(og: Any, model: Any, prompts: np.ndarray, max_new: int,
                    choose: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """New tokens ``[n, max_new]`` of one batch by GenAI's generator (prompts of one length, or
    left-padded with 0); with ``choose`` = (prompt indices, fp_k), each token is the node's choice
    forced through ``set_logits`` and the hidden state is fingerprinted as the node does."""
    n, width = prompts.shape
    gp = og.GeneratorParams(model)
    gp.set_search_options(max_length=width + max_new, min_length=width + max_new, do_sample=False, batch_size=n)
    g = og.Generator(model, gp)
    g.append_tokens(prompts.astype(np.int32))
    if choose is None:
        while not g.is_done():
            g.generate_next_token()
        return np.stack([g.get_sequence(i)[width:] for i in range(n)])
    index, k = choose
    out = np.zeros((n, max_new), np.int32)
    for t in range(max_new):
        logits = np.asarray(g.get_logits()).reshape(n, -1)
        tok, _ = tk.choose(logits, 0.0, 0, index, np.full(n, t))
        if t % tk.FP_EVERY == 0:
            tk.fingerprint(np.asarray(g.get_output("p2pnode.hidden"))[:, -1].astype(np.float32), k)
        forced = np.full(logits.shape, -1e4, np.float32)
        forced[np.arange(n), tok] = 0.0
        g.set_logits(forced)
        g.generate_next_token()
        out[:, t] = tok
    return out


def bench_genai(seconds: float, width: int = 24, repeats: int = 3) -> dict[str, Any]:
    """The node's decode loop against ONNX Runtime GenAI on one decoder file (paired runs)."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return {"installed": False}
    import tempfile

    import onnx

    from p2pnode.exec import decoder

    model = onnx.load_from_string(tm.decoder(BIG))
    decoder.expose_hidden(model)  # the graph the node runs, so both read the same file
    raw = model.SerializeToString()
    ops = backends.OrtOps("ort-cpu")
    g = np.random.default_rng(4)

    def job(n: int) -> generation_jobs.GenerationJob:
        rows = [[int(t) for t in row] for row in g.integers(3, BIG.vocab, size=(n, width))]
        return generation_jobs.prepare(raw, {}, rows, max_new=MAX_NEW, eos=-1, batch=BATCH)

    _direct(ops, job(BATCH))  # warm
    per_prompt = _direct(ops, job(4 * BATCH))[0] / (4 * BATCH)
    n = max(BATCH, int(seconds / per_prompt) // BATCH * BATCH)
    out: dict[str, Any] = {"installed": True, "version": og.__version__, "prompts": n, "prompt_len": width,
                           "max_new": MAX_NEW, "batch": BATCH, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "model.onnx").write_bytes(raw)
        Path(folder, "genai_config.json").write_text(json.dumps(tm.genai_config(BIG, max_length=width + MAX_NEW)))
        gm = og.Model(folder)
        for r in range(repeats):
            j = job(n)
            prompts = j.arrays["prompt"]
            node_s, node_out = _direct(ops, j)
            ours = node_out.arrays["tokens"]
            t0 = time.perf_counter()
            own = np.concatenate([_genai_generate(og, gm, prompts[b:b + BATCH], MAX_NEW)
                                  for b in range(0, n, BATCH)])
            own_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            driven = np.concatenate([_genai_generate(og, gm, prompts[b:b + BATCH], MAX_NEW,
                                                     (np.arange(b, min(n, b + BATCH)), tk.FP_K))
                                     for b in range(0, n, BATCH)])
            driven_s = time.perf_counter() - t0
            out["runs"].append({"node_s": node_s, "genai_s": own_s, "genai_driven_s": driven_s,
                                "same_tokens": bool(np.array_equal(own, ours)),
                                "same_tokens_driven": bool(np.array_equal(driven, ours))})
        # prompts of 8 to 32 tokens in one batch: GenAI attends to the left padding
        mixed = [[int(t) for t in g.integers(3, BIG.vocab, size=int(k))] for k in g.integers(8, 33, size=BATCH)]
        mj = generation_jobs.prepare(raw, {}, mixed, max_new=MAX_NEW, eos=-1, batch=BATCH)
        ours = _direct(ops, mj)[1].arrays["tokens"]
        padded = np.zeros((BATCH, int(mj.lengths.max())), np.int32)
        for i, length in enumerate(mj.lengths):
            padded[i, padded.shape[1] - length:] = mj.arrays["prompt"][i, :length]
        out["padded_batch_agreement"] = float((_genai_generate(og, gm, padded, MAX_NEW) == ours).mean())
    tokens = n * MAX_NEW
    runs = out["runs"]
    out["node_tokens_per_s"] = float(np.median([tokens / x["node_s"] for x in runs]))
    out["genai_tokens_per_s"] = float(np.median([tokens / x["genai_s"] for x in runs]))
    out["genai_driven_tokens_per_s"] = float(np.median([tokens / x["genai_driven_s"] for x in runs]))
    out["genai_ratio"] = float(np.median([x["node_s"] / x["genai_s"] for x in runs]))
    out["genai_driven_ratio"] = float(np.median([x["node_s"] / x["genai_driven_s"] for x in runs]))
    return out


def render_genai(c: Any, ga: dict[str, Any] | None) -> None:
    from rich.table import Table

    if ga is None:
        return
    if not ga["installed"]:
        c.print("genai: onnxruntime-genai is not installed (pip install 'p2pnode\\[genai]'); not measured")
        return
    t = Table(title=f"the node's decode loop vs ONNX Runtime GenAI {ga['version']}: {ga['prompts']} prompts of "
                    f"{ga['prompt_len']} tokens × {ga['max_new']} new, batch {ga['batch']} (medians of "
                    f"{len(ga['runs'])} paired runs)")
    for col in ("", "tokens/s", "× node", "same tokens as the node"):
        t.add_column(col, justify="right")
    t.add_row("node's loop", f"{ga['node_tokens_per_s']:.0f}", "1.00", "")
    t.add_row("GenAI, its own greedy loop", f"{ga['genai_tokens_per_s']:.0f}", f"{ga['genai_ratio']:.2f}",
              str(all(x["same_tokens"] for x in ga["runs"])))
    t.add_row("GenAI, the node's choice and fingerprints", f"{ga['genai_driven_tokens_per_s']:.0f}",
              f"{ga['genai_driven_ratio']:.2f}", str(all(x["same_tokens_driven"] for x in ga["runs"])))
    c.print(t)
    c.print(f"genai: prompts of 8 to 32 tokens left-padded in one batch: {100 * ga['padded_batch_agreement']:.1f} % "
            "of GenAI's tokens equal the node's (it attends to the padding)")


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
    render_genai(c, r.get("genai"))
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
    p.add_argument("--only-genai", action="store_true", help="the GenAI comparison alone")
    args = p.parse_args()
    if args.only_genai:
        from rich.console import Console

        ga = bench_genai(args.seconds)
        print(json.dumps(ga, indent=2)) if args.json else render_genai(Console(), ga)
        sys.exit(0)
    result = trio.run(_network, args)
    result["check_cost"] = bench_check_cost()
    result["catch"] = bench_catch(args.trials)
    result["genai"] = bench_genai(args.seconds)
    render(result, args.png, tables=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
