"""The demo's transformer stage: a tiny GPT-2-style decoder built here (random weights, a BPE
tokenizer trained on Python's own docstrings: no model hub) generates text for prompts in shards
across the swarm's providers, each shard checked by another provider's teacher-forced pass over
sampled prompts; a cheater's shard is refuted and done again elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from p2pnode.control.client import call
from p2pnode.errors import ControlError
from p2pnode.swarm.launcher import NodeProc

PROMPTS = 24
MAX_NEW = 24


def demo_generate(nodes: list[NodeProc], console: Console, base: Path, cheater: str) -> dict[str, Any]:
    try:
        from p2pnode import transformer_models as tm

        tok = tm.tokenizer()
    except ImportError as exc:  # tokenizers is in the demo extra
        console.print(f"[yellow]transformer stage skipped: {exc}[/]")
        return {"state": "skipped", "reason": str(exc)}
    folder = tm.write_model_dir(base / "gpt", tm.decoder(tm.Config(seed=5)), tok, eos=0)
    lines = tm.corpus(40_000)
    prompts = [" ".join(lines[(7 * i) % len(lines)].split()[:6]) for i in range(PROMPTS)]
    (base / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n")
    out = base / "generated.jsonl"
    requester, providers = nodes[-1], len(nodes) - 1
    names = {node.peer: f"node {node.index}" for node in nodes}
    console.print(f"[bold]A transformer[/]: a 2-layer GPT-2-style decoder generates {MAX_NEW} tokens for each of "
                  f"{PROMPTS} prompts on {providers} providers (a KV cache in each provider's worker); each shard "
                  "is checked by another provider's teacher-forced pass over its prompts, against the tokens and "
                  "activation fingerprints its provider signed")
    redone: list[str] = []

    def on_event(e: dict[str, Any]) -> None:
        if e.get("event") != "shard":
            return
        who = names.get(str(e.get("provider", "")), "?")
        if e["state"] == "done":
            console.print(f"  shard {e['shard']} by {who}: {e['rows']} prompts, {e.get('tokens', 0)} tokens at "
                          f"{e.get('tokens_per_s', 0):.0f} tokens/s, {str(e['outcome']).split(' by ')[0]}")
        elif e["state"] == "retry":
            redone.append(who)
            console.print(f"  [red]shard {e['shard']} by {who} rejected[/] ({e['outcome']}); done again elsewhere")

    try:
        r = call(requester.data_dir / "control.sock", "generate", timeout=300, on_event=on_event, model=str(folder),
                 prompts=str(base / "prompts.jsonl"), output=str(out), max_new=MAX_NEW,
                 shard_rows=-(-PROMPTS // (2 * providers)), providers=providers, max_price=10**9, deadline=120)
    except ControlError as exc:
        console.print(f"[red]transformer stage failed: {exc}[/]")
        return {"state": "error", "reason": str(exc)}
    made = [json.loads(line) for line in out.read_text().splitlines()]
    caught = bool(cheater) and names.get(cheater) in redone
    g = r["generate"]
    console.print(f"[green]{g['prompts']} prompts, {g['tokens']} tokens generated across the swarm[/] "
                  f"({g['tokens_per_s']:.0f} tokens/s), {r['checked_rows']} prompts teacher-forced by other "
                  "providers" + (f"; the cheater ({names.get(cheater, '?')}) was caught on generation" if caught else ""))
    raw = (folder / "model.onnx").read_bytes()
    same = all(m["tokens"] == _greedy(raw, tok.encode(m["prompt"]).ids, MAX_NEW) for m in made[:4])
    console.print(f"  the first 4 generations {'equal' if same else '[red]differ from[/]'} direct greedy decoding "
                  "here, token for token (random weights: the text itself is not fluent)")
    return {"state": "done", "prompts": g["prompts"], "tokens": g["tokens"], "tokens_per_s": g["tokens_per_s"],
            "checked_prompts": r["checked_rows"], "redone": r["retries"], "rejected_providers": redone,
            "cheater_caught": caught, "equal_to_direct": same}


def _greedy(raw: bytes, prompt: list[int], max_new: int, eos: int = 0) -> list[int]:
    """Greedy decoding of ``prompt`` with ONNX Runtime in this process, the whole sequence each step."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    pasts = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
             if i.name.startswith("past_key_values")}
    seq, made = list(prompt), []
    for _ in range(max_new):
        feed = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64),
                "position_ids": np.arange(len(seq), dtype=np.int64)[None], **pasts}
        made.append(int(np.argmax(sess.run(["logits"], feed)[0][0, -1])))
        seq.append(made[-1])
        if made[-1] == eos:
            break
    return made
