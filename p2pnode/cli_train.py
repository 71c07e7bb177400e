"""``p2pnode submit train``: the user's own model trained on the user's data across providers.

The node reads the files (same user), runs the rounds (``services/trainer.py``) and writes the
trained model; this prints the live progress: each round's loss and speed, each shard's provider,
and every result a step check refused."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pnode.config import Config
from p2pnode.control.client import call
from p2pnode.errors import LocalError


def add_arguments(sm: argparse.ArgumentParser) -> None:
    """The flags of ``submit train`` (beside the other ``submit`` flags)."""
    g = sm.add_argument_group("train (submit train --model M.json --data DATA.npz)")
    g.add_argument("--data", type=Path, help="train: a .npz with x (rows × inputs) and y (labels or targets)")
    g.add_argument("--rounds", type=int, default=10, help="train: rounds (default 10)")
    g.add_argument("--local-steps", type=int, default=50, help="train: steps each provider takes per round (default 50)")
    g.add_argument("--lr", type=float, default=0.01, help="train: learning rate of the local steps (default 0.01)")
    g.add_argument("--wd", type=float, default=0.0, help="train: AdamW's weight decay (default 0)")
    g.add_argument("--batch", type=int, default=32, help="train: rows per step (default 32)")
    g.add_argument("--outer", default="avg", choices=["avg", "nesterov"],
                   help="train: the outer step: average the providers' weights, or DiLoCo's Nesterov momentum")


def submit_train(config: Config, args: argparse.Namespace, console: Any) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pnode import train_io, ui

    if args.model is None or args.data is None:
        raise LocalError("submit train needs --model M.json (or a trained .npz) and --data DATA.npz")
    for path in (args.model, args.data):
        if not path.is_file():
            raise LocalError(f"no such file: {path}")
    if args.rounds < 1 or args.local_steps < 1 or args.providers < 1 or args.batch < 1:
        raise LocalError("--rounds, --local-steps, --providers and --batch must be at least 1")
    output = str(args.output.resolve()) if args.output else ""
    if output:
        train_io.check_output(output)  # before anything is sent or paid for
    deadline = args.deadline if args.deadline != 60.0 else 600.0
    request = dict(model=str(args.model.resolve()), data=str(args.data.resolve()), output=output,
                   rounds=args.rounds, local_steps=args.local_steps, providers=args.providers, lr=args.lr, wd=args.wd,
                   batch=args.batch, seed=args.seed, outer=args.outer, max_price=args.max_price, deadline=deadline,
                   fresh=args.fresh)
    timeout = deadline * args.rounds + 60
    if args.json:
        ui_result = call(config.control_socket, "train", timeout=timeout, **request)
        print(__import__("json").dumps(ui_result, indent=2))
        return 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("rounds", total=args.rounds, info="")

        def on_event(e: dict[str, Any]) -> None:
            kind, state = e.get("event"), e.get("state")
            if kind == "train":
                progress.update(task, completed=e["resumed_from"])
                if e["resumed_from"]:
                    progress.console.print(f"  resumed after round {e['resumed_from']} (its checkpoint)")
            elif kind == "round":
                progress.update(task, completed=e["round"], info=f"loss {e['loss']:.4f}, {e['rows_per_s']:.0f} rows/s")
            elif kind == "shard" and state == "done":
                progress.console.print(f"  round {e['round']} shard {e['shard']} by {ui.short_peer(e['provider'])}: "
                                       f"loss {e['loss']:.4f}, {e['rows_per_s']:.0f} rows/s, "
                                       f"{escape(str(e['outcome']))}", highlight=False)
            elif kind == "shard" and state in ("caught", "retry"):
                what = "refused by its check" if state == "caught" else "failed"
                progress.console.print(f"  [yellow]round {e['round']} shard {e['shard']} {what} "
                                       f"({ui.short_peer(e['provider'])}: {escape(str(e['outcome']))}): "
                                       "trained again elsewhere[/]", highlight=False)

        result = call(config.control_socket, "train", timeout=timeout, on_event=on_event, **request)
    console.print(train_summary(result))
    return 0


def train_summary(m: dict[str, Any]) -> str:
    from p2pnode.services.operations import describe_paid

    lines = [f"DONE  training {m['train']}: {m['rounds']} rounds"
             + (f" ({m['resumed_from']} from an earlier run)" if m["resumed_from"] else "")
             + f", loss {m['loss']}, {m['seconds']:.2f} s",
             f"  {m['retries']} shard-round(s) trained again elsewhere"
             + (f"; caught: {', '.join(m['caught'])}" if m["caught"] else ""),
             f"  {describe_paid(m.get('paid') or {})}"]
    lines += [f"  {peer}: {n} shard-round(s)" for peer, n in sorted(m["by_provider"].items())]
    if m.get("saved"):
        lines.append(f"  saved the trained model to {m['saved']['path']}")
    return "\n".join(lines)
