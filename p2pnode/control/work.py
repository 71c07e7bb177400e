"""The control commands that run work for the user: ``submit`` (a job), ``map`` and ``submit`` with
a model (a model over a dataset), ``train`` (a model trained across providers) and ``cancel``.

Everything the user gives is checked before anything is sent or paid for: the numbers, the input
files, the output path (:mod:`p2pnode.model_io`). A job or map runs until it ends, ``cancel`` names
it, or its client goes away (the control connection closes: Ctrl-C); stopped, its jobs are cancelled
at their providers and the answer says what it paid.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pnode import model_io
from p2pnode.control.requests import MAX_DEADLINE_S, MAX_PRICE, flag, number, text
from p2pnode.errors import ControlError, unwrap_group
from p2pnode.exec import model_jobs
from p2pnode.services.operations import Hangup, Runs, describe_paid

CANCEL_WAIT_S = 30.0  # how long `cancel` waits for what it stopped to end (its providers told)
Emit = Callable[[dict[str, Any]], Awaitable[None]]


def _hangup(emit: Any) -> Hangup | None:
    """The client's hang-up, from the server's call object (None for in-process callers); from
    now on the handler answers for it."""
    hangup = getattr(emit, "hangup", None)
    if hangup is not None:
        emit.answers_hangup = True
    return hangup


async def _with_events(emit: Emit, work: Callable[[Callable[[dict[str, Any]], None]], Awaitable[Any]]) -> Any:
    """Run ``work(on_event)``, its events sent to the client as they come (a slow client misses
    some, never the answer)."""
    send, recv = trio.open_memory_channel[dict[str, Any]](256)

    def on_event(item: dict[str, Any]) -> None:
        try:
            send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass

    async def forward() -> None:
        async for item in recv:
            await emit(item)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                return await work(on_event)
            finally:
                send.close()
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None


async def submit_job(jobs: Any, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """A workload with parameters (and input arrays from files) on the network."""
    params = request.get("params") or {}
    files = request.get("input_files") or {}
    if not isinstance(params, dict) or not isinstance(files, dict):
        raise ControlError("params and input_files must be maps")
    args: dict[str, Any] = dict(max_price=number(request, "max_price", lo=1, hi=MAX_PRICE, integer=True),  # noqa: C408
                                deadline_s=number(request, "deadline", 60, lo=1e-3, hi=MAX_DEADLINE_S),
                                k=number(request, "k", 3, lo=1, hi=64, integer=True),
                                backend=text(request, "backend", max_len=32),
                                verify=text(request, "verify", "auto", max_len=32))
    output = text(request, "output")
    if output:
        model_io.check_output(output)
    inputs = {str(name): model_io.read_array(str(path), f"input {name}") for name, path in files.items()} or None
    workload = text(request, "workload", max_len=64)
    hangup = _hangup(emit)
    rec = await _with_events(emit, lambda on_event: jobs.submit(workload, dict(params), inputs=inputs,
                                                                on_event=on_event, hangup=hangup, **args))
    if rec.state == "cancelled":
        raise ControlError(f"job {rec.job[:16]} {rec.outcome}; {describe_paid(rec.paid)}")
    out: dict[str, Any] = rec.to_json()
    if output and rec.state == "done" and rec.output is not None:
        arrays = dict(rec.output.arrays)
        out["saved"] = await trio.to_thread.run_sync(model_io.save_outputs, output, arrays, sorted(arrays))
    return out


async def run_map(maps: Any, prep: Any, request: dict[str, Any], emit: Emit, *,
                  single: bool = False) -> dict[str, Any]:
    """A model over a dataset, outputs saved to ``output``: one job (``single``), or shards of
    ``shard_rows`` (0: two shards per provider). ``prep``: the node's
    :class:`~p2pnode.services.model_prep.ModelPrep`, which tries the model in a worker."""
    model_path, input_path, output = text(request, "model"), text(request, "input"), text(request, "output")
    text_path = text(request, "text")
    max_tokens = number(request, "max_tokens", 512, lo=1, hi=1 << 20, integer=True)
    if not model_path or not (input_path or text_path):
        raise ControlError("a model job needs a model and an input file (or --text)")
    shard_rows = number(request, "shard_rows", 0, lo=0, hi=2**31, integer=True)
    providers = number(request, "providers", 3, lo=1, hi=64, integer=True)
    max_price = number(request, "max_price", lo=1, hi=MAX_PRICE, integer=True)
    deadline = number(request, "deadline", 600, lo=1e-3, hi=MAX_DEADLINE_S)
    backend, verify = text(request, "backend", max_len=32), text(request, "verify", "auto", max_len=32)
    fresh = flag(request, "fresh")
    if verify not in ("auto", "none"):
        raise ControlError(f"--verify {verify} does not check a model job: it is checked by re-running sampled rows "
                           "or whole shards elsewhere (auto), or not at all (none); freivalds checks matrix "
                           "products (matmul) only")
    if output:
        model_io.check_output(output)
    if text_path:
        blob, arrays, notes = await trio.to_thread.run_sync(_read_text, Path(model_path), text_path, max_tokens)
    else:
        blob, arrays, notes = await trio.to_thread.run_sync(_read, Path(model_path), input_path)
    # the model is tried on a few rows in a worker (memory limit, timeout), never in the node
    job = await prep.prepare(blob, arrays, timeout=min(deadline, model_jobs.PROBE_TIMEOUT_S))
    notes += _conversions(job, arrays)
    if single or job.whole:  # a model that couples its rows runs on all of them at once
        shard_rows = job.rows
    result = await _in_shards(maps, job, emit, notes, shard_rows=shard_rows, providers=providers,
                              max_price=max_price, deadline=deadline, backend=backend, verify=verify, fresh=fresh)
    summary: dict[str, Any] = result.summary()
    summary["notes"] = notes
    summary["model"] = {"inputs": [s.name for s in job.info.inputs], "outputs": [s.name for s in job.info.outputs],
                        "row_independent": job.row_independent, "coupling": job.coupling,
                        "gflop": round(job.gflop(), 6)}
    if output:
        names = [s.name for s in job.info.outputs]
        summary["saved"] = await trio.to_thread.run_sync(model_io.save_outputs, output, result.outputs, names)
    return summary


async def _in_shards(maps: Any, job: Any, emit: Emit, notes: list[str], *, shard_rows: int, providers: int,
                     max_price: Any, deadline: float, backend: str, verify: str, fresh: bool) -> Any:
    """Say the notes, then run ``job`` over the market in shards (``shard_rows`` 0: two a provider)."""
    if shard_rows <= 0:
        shard_rows = max(1, -(-job.rows // (2 * max(1, providers))))
    for note in notes:
        await emit({"event": "note", "text": note})
    hangup = _hangup(emit)
    return await _with_events(emit, lambda on_event: maps.run(
        job, shard_rows=shard_rows, providers=providers, max_price=max_price, deadline_s=deadline, backend=backend,
        verify=verify, fresh=fresh, hangup=hangup, on_event=on_event))


async def run_generate(maps: Any, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Text generation: the prompts of ``prompts`` (tokenized with the model folder's
    ``tokenizer.json``) through its decoder, in shards across ``providers``; the generations saved
    to ``output`` (.jsonl) in the prompts' order (``exec/generation_jobs.py``)."""
    from p2pnode import text_data

    model_path, prompts_path, output = text(request, "model"), text(request, "prompts"), text(request, "output")
    if not model_path or not prompts_path:
        raise ControlError("generate needs a model (its folder) and a prompts file")
    max_new = number(request, "max_new", 64, lo=1, hi=1 << 14, integer=True)
    temperature = number(request, "temperature", 0.0, lo=0.0, hi=100.0)
    seed = number(request, "seed", 0, lo=0, hi=2**63 - 1, integer=True)
    providers = number(request, "providers", 3, lo=1, hi=64, integer=True)
    shard_rows = number(request, "shard_rows", 0, lo=0, hi=2**31, integer=True)
    max_price = number(request, "max_price", lo=1, hi=MAX_PRICE, integer=True)
    deadline = number(request, "deadline", 600, lo=1e-3, hi=MAX_DEADLINE_S)
    max_tokens = number(request, "max_tokens", 512, lo=1, hi=1 << 16, integer=True)
    backend, verify = text(request, "backend", max_len=32), text(request, "verify", "auto", max_len=32)
    if verify not in ("auto", "none"):
        raise ControlError(f"--verify {verify} does not check generation: it is checked by a teacher-forced pass over "
                           "sampled prompts elsewhere (auto), or not at all (none)")
    if output:
        text_data.check_generation_output(output)
    job, texts, tok, notes = await trio.to_thread.run_sync(
        lambda: _read_prompts(Path(model_path), prompts_path, max_tokens=max_tokens, max_new=max_new,
                              temperature=temperature, seed=seed))
    result = await _in_shards(maps, job, emit, notes, shard_rows=shard_rows, providers=providers,
                              max_price=max_price, deadline=deadline, backend=backend, verify=verify,
                              fresh=flag(request, "fresh"))
    summary: dict[str, Any] = result.summary()
    summary["notes"] = notes
    made = int(result.outputs["length"].sum())
    summary["generate"] = {"prompts": job.rows, "tokens": made, "max_new": max_new, "temperature": temperature,
                           "seed": seed, "tokens_per_s": round(made / result.seconds, 1) if result.seconds else 0}
    if output:
        summary["saved"] = await trio.to_thread.run_sync(text_data.write_generations, output, tok, texts,
                                                         result.outputs["tokens"], result.outputs["length"])
    return summary


def _read_prompts(model_path: Path, prompts_path: str, *, max_tokens: int, max_new: int, temperature: float,
                  seed: int) -> tuple[Any, list[str], Any, list[str]]:
    """The generation job of ``prompts_path`` through the decoder in ``model_path`` (its
    ``tokenizer.json`` and ``config.json``'s ``eos_token_id`` beside it), the prompts, the tokenizer."""
    from p2pnode import text_data
    from p2pnode.exec import generation_jobs, onnx_model

    model = text_data.model_file(model_path)
    raw, external = onnx_model.unpack(onnx_model.pack_file(model))
    tok = text_data.tokenizer_for(model)
    eos = text_data.model_config(model).get("eos_token_id", -1)
    if not isinstance(eos, int) or isinstance(eos, bool):
        eos = -1
    texts = text_data.read_texts(prompts_path)
    ids, cut = text_data.token_lists(tok, texts, max_tokens)
    job = generation_jobs.prepare(raw, external, ids, max_new=max_new, temperature=temperature, seed=seed, eos=eos)
    notes = [f"{len(texts)} prompts tokenized: {sum(map(len, ids))} tokens, the longest {max(map(len, ids))}; "
             f"up to {max_new} new tokens each" + (f", sampled at temperature {temperature:g} (seed {seed})"
                                                   if temperature > 0 else ", greedy")]
    if cut:
        notes.append(f"{cut} prompts cut at {max_tokens} tokens (--max-tokens)")
    return job, texts, tok, notes


def _read_text(model_path: Path, text_path: str, max_tokens: int) -> tuple[bytes, dict[str, Any], list[str]]:
    """The model (by its file or folder), and the documents of ``text_path`` tokenized with the
    ``tokenizer.json`` beside it as the model's inputs (``p2pnode.text_data``)."""
    from p2pnode import text_data
    from p2pnode.exec import onnx_model

    model = text_data.model_file(model_path)
    blob = onnx_model.pack_file(model)
    names = [s.name for s in onnx_model.describe(onnx_model.load(blob)).inputs]
    arrays, notes = text_data.encode(text_data.tokenizer_for(model), text_data.read_texts(text_path), names,
                                     max_tokens)
    return blob, arrays, notes


def _read(model_path: Path, input_path: str) -> tuple[bytes, dict[str, Any], list[str]]:
    """The model (packed, checked; scikit-learn's ZipMap given as its tensor), the dataset, and
    what was done to the model to make it."""
    from p2pnode import text_data
    from p2pnode.exec import onnx_model

    blob = onnx_model.pack_file(text_data.model_file(model_path))
    raw, external = onnx_model.unpack(blob)
    raw, notes = model_io.drop_zipmap(raw)
    if notes:
        blob = onnx_model.pack(raw, external)
    return blob, model_io.read_dataset(input_path), notes


def _conversions(job: Any, arrays: dict[str, Any]) -> list[str]:
    """What was done to the user's arrays to make what the model takes (``model_io.conversions``)."""
    return model_io.conversions(model_jobs.name_arrays(job.info, arrays), job.arrays)


async def cancel(runs: list[Runs], request: dict[str, Any]) -> dict[str, Any]:
    """Stop the running job or map whose id (or one of whose jobs' ids) starts with ``id``; wait
    until it has ended (its providers told) and say what it paid."""
    target = text(request, "id", max_len=64).strip().lower()
    if len(target) < 4:
        raise ControlError("name a job or map by at least 4 characters of its id (p2pnode jobs lists them)")
    run = next((r for r in (rs.find(target) for rs in runs) if r is not None), None)
    if run is None:
        raise ControlError(f"nothing running has an id starting {target} (p2pnode jobs lists what runs)")
    run.cancel("by p2pnode cancel")
    with trio.move_on_after(CANCEL_WAIT_S):
        await run.ended.wait()
    return {"kind": run.kind, "id": run.id, "state": "cancelled" if run.ended.is_set() else "cancelling",
            "paid": run.spending.to_json()}


async def run_train(trainer: Any, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Train the user's model on the user's data across providers (``services/trainer.py``); the
    trained model saved to ``output``."""
    from p2pnode import train_io
    from p2pnode.protocol import rounds

    model_path, data_path, output = text(request, "model"), text(request, "data"), text(request, "output")
    if not model_path or not data_path:
        raise ControlError("a training job needs a model (.json or .npz) and data (.npz with x and y)")
    seed = number(request, "seed", 0, lo=0, hi=2**63 - 1, integer=True)
    outer = text(request, "outer", "avg", max_len=16)
    if outer not in rounds.OUTER:
        raise ControlError(f"--outer {outer}: one of {', '.join(rounds.OUTER)}")
    if output:
        train_io.check_output(output)
    spec, weights = await trio.to_thread.run_sync(train_io.read_model, model_path, seed)
    x, y = await trio.to_thread.run_sync(train_io.read_data, data_path, spec)
    plan = rounds.Plan(spec, rounds=number(request, "rounds", 10, lo=1, hi=100_000, integer=True),
                       local_steps=number(request, "local_steps", 50, lo=1, hi=10_000, integer=True),
                       shards=number(request, "providers", 2, lo=1, hi=64, integer=True),
                       lr=number(request, "lr", 0.01, lo=0.0, hi=10.0), wd=number(request, "wd", 0.0, lo=0.0, hi=1.0),
                       batch=number(request, "batch", 32, lo=1, hi=65_536, integer=True), seed=seed, outer=outer)
    hangup = _hangup(emit)
    result = await _with_events(emit, lambda on_event: trainer.run(
        plan, weights, x, y, max_price=number(request, "max_price", lo=1, hi=MAX_PRICE, integer=True),
        deadline_s=number(request, "deadline", 600, lo=1e-3, hi=MAX_DEADLINE_S), on_event=on_event,
        fresh=flag(request, "fresh"), hangup=hangup))
    summary: dict[str, Any] = result.summary()
    summary["model"] = {"params": spec.params, "layers": spec.to_json()["layers"], "loss": spec.loss,
                        "optimizer": spec.optimizer, "rows": len(x)}
    if output:
        summary["saved"] = await trio.to_thread.run_sync(train_io.save_model, output, spec, result.weights,
                                                         result.losses)
    return summary
