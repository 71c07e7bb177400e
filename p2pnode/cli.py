"""The ``p2pnode`` command.

``run`` starts a node in the foreground; ``id``, ``peers``, ``market`` and ``status`` read a running
node through its control socket (``--json`` for machines). Every failure the user can fix prints
one line, ``p2pnode: error: ...``, and exits 1; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pnode import __version__, cli_train
from p2pnode.config import Config
from p2pnode.control.client import Interrupted, call
from p2pnode.errors import LocalError, P2PNodeError, unwrap_group
from p2pnode.run_flags import Parser, add_common, add_run_flags, config_from, finite


def _max_price(text: str) -> int:
    """An argparse type: a price of at least 1 µcr (0 would pay nothing, and no provider works for that)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of micro-credits") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: a job pays at least 1 µcr (every provider charges at least 1 "
                                         "for a job), so a smaller maximum would never run")
    return value


def _parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    add_common(common)

    p = Parser(prog="p2pnode", description="A node of a decentralized GPU compute market.")
    p.add_argument("--version", action="version", version=f"p2pnode {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run a node in the foreground")
    add_run_flags(run)

    _add_swarm(sub)
    _add_sim(sub)
    _add_submit(sub, common)
    _add_ledger(sub, common)
    for name, text in (
        ("id", "print this node's peer id (and addresses when it runs)"),
        ("peers", "list connected peers"),
        ("market", "show the capacity table"),
        ("status", "healthy / issues / error, with the reasons"),
        ("pause", "stop taking new jobs (running ones finish; the ad offers nothing)"),
        ("resume", "take jobs again"),
        ("ui", "print the address of the running node's web dashboard, with its login token"),
    ):
        sp = sub.add_parser(name, parents=[common], help=text)
        sp.add_argument("--json", action="store_true", help="print JSON")
    return p


def _add_swarm(sub: Any) -> None:
    sw = sub.add_parser("swarm", help="local swarms of real nodes: the demo, scenarios, a swarm to keep running",
                        description="Without an action: the demo (a swarm, a real model, verified jobs, a cheater "
                                    "caught). `run SCENARIO.toml`: a scenario, judged by its expectations. "
                                    "`up`, `status`, `down`, `logs`: a swarm that keeps running in the background.")
    sw.add_argument("action", nargs="?", default="demo", choices=["demo", "run", "up", "status", "down", "logs"],
                    help="what to do (default: demo)")
    sw.add_argument("scenario", nargs="?", type=Path, help="run: the scenario file (tools/scenarios/*.toml)")
    sw.add_argument("--nodes", type=int, default=None, help="demo/up: number of nodes (default 5); run: scale to N")
    sw.add_argument("--keep", action="store_true", help="keep the swarm running until Ctrl-C")
    sw.add_argument("--timeout", type=finite, default=60.0, help="seconds to wait for convergence")
    sw.add_argument("--dir", type=Path, help="the swarm's folder (default: a temp dir; up: ~/.local/share/p2pnode-swarm)")
    sw.add_argument("--out", type=Path, help="run: where the summary and plots go (default ./scenario-NAME)")
    sw.add_argument("--no-isolate", action="store_true", help="run: stay on the host's loopback even as root")
    sw.add_argument("--in-process", action="store_true",
                    help="run/up: all nodes in one process and one trio loop, sharing one executor (100 nodes "
                         "on a laptop)")
    sw.add_argument("--json", action="store_true", help="print a JSON summary")
    sw.add_argument("--ui", default="127.0.0.1:7465", metavar="HOST:PORT",
                    help="up/run: serve the swarm view here, on loopback (default 127.0.0.1:7465, or a free port)")
    sw.add_argument("--no-ui", dest="ui", action="store_const", const="", help="up/run: no swarm view")
    sw.add_argument("--cheat", metavar="MODE[:X]", default="",
                    help="demo/up: make node 1 an adversary (garbage, perturb, replay, lowprec, skip, overclaim, stall)")
    sw.add_argument("--node", type=int, default=None, help="logs: only this node's log")
    sw.add_argument("--tail", type=int, default=None, metavar="N",
                    help="logs: the last N lines of each log (default 10; with --node, all)")
    sw.add_argument("-f", "--follow", action="store_true", help="logs: keep printing new lines until Ctrl-C")


def _add_sim(sub: Any) -> None:
    si = sub.add_parser("sim", help="simulate a scenario on the node's own core, up to 10,000 nodes",
                        description="Run a scenario file (the ones `swarm run` takes) on the simulator: the node's "
                                    "state machines, market table, checks, reputation and ledger on a modelled "
                                    "network in virtual time. Same summary and expectations as `swarm run`, plus "
                                    "messages and bytes per node per second. Exit status 0 when every expectation held.")
    si.add_argument("scenario", type=Path, help="the scenario file (tools/scenarios/*.toml)")
    si.add_argument("--nodes", type=int, default=None, help="scale the scenario to N nodes (3..10000)")
    si.add_argument("--duration", type=finite, default=None, help="seconds of work (default: the scenario's)")
    si.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    si.add_argument("--latency-ms", type=finite, default=0.5, help="one hop's base latency (default 0.5 ms)")
    si.add_argument("--bandwidth-mbps", type=finite, default=1000.0, help="each link's bandwidth (default 1000)")
    si.add_argument("--speed-spread", type=finite, default=0.0,
                    help="sigma of the providers' lognormal speeds (default 0: one machine's calibration)")
    si.add_argument("--ad-interval", type=finite, default=10.0,
                    help="providers' base ad interval in seconds (default 10); paced longer in a large market")
    si.add_argument("--ad-ttl", type=finite, default=30.0, help="base ad TTL in seconds (default 30)")
    si.add_argument("--flood", action="store_true",
                    help="no pacing: every provider publishes every --ad-interval (the version-1 market)")
    si.add_argument("--out", type=Path, help="write summary.json and the plot here")
    si.add_argument("--json", action="store_true", help="print the JSON summary")


def _add_submit(sub: Any, common: argparse.ArgumentParser) -> None:
    """``submit``, ``cancel`` and ``jobs``: work on the network."""
    sm = sub.add_parser("submit", parents=[common], help="run a job on the network and show its result",
                        description="Run a job. With --model: `infer` runs your ONNX model on your data as one "
                                    "job, `map` runs it over a dataset in shards across several providers, "
                                    "`generate` generates text with a decoder, "
                                    "`train` trains your model (a .json model map) on --data across providers.")
    sm.add_argument("workload", help="matmul, infer, train_step; or, with --model, infer, map, generate or train")
    sm.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="workload parameter")
    sm.add_argument("--model", "-m", type=Path, help="an ONNX model (.onnx; external data files beside it)")
    sm.add_argument("--input", "-i", action="append", default=[], metavar="FILE | NAME=FILE.npy",
                    help="with --model: the data (.npy, or .npz with one array per model input); otherwise an "
                         "input array (with -p inputs=blob). Sent encrypted, once, as a blob")
    sm.add_argument("--text", type=Path, help="with --model (a folder, or a .onnx with tokenizer.json beside it): "
                                              "documents to tokenize, .txt (one a line) or .jsonl")
    sm.add_argument("--max-tokens", type=int, default=512, help="--text: cut documents at this many tokens "
                                                                 "(default 512)")
    sm.add_argument("--prompts", type=Path, help="generate: prompts, .txt (one a line) or .jsonl (a string, or an "
                                                 "object with a \"prompt\" or \"text\" field, a line)")
    sm.add_argument("--max-new-tokens", type=int, default=64, help="generate: new tokens per prompt at most "
                                                                   "(default 64)")
    sm.add_argument("--temperature", type=finite, default=0.0,
                    help="generate: 0 is greedy (default); above 0, tokens are drawn, reproducibly from --seed")
    sm.add_argument("--seed", type=int, default=0,
                    help="generate: the seed of the draws; train: of the batches and of a .json model's weights "
                         "(default 0)")
    sm.add_argument("--output", "-o", type=Path, help="save the result here (.npz: every output array; .npy: the "
                                                      "first: the model's first output, or matmul's c; generate: "
                                                      ".jsonl)")
    sm.add_argument("--shard-rows", type=int, default=0, help="map: rows per job (default: spread over --providers)")
    sm.add_argument("--max-price", type=_max_price, default=100_000,
                    help="most micro-credits the job (map: the whole dataset) pays its providers (default 100000); "
                         "checks by other providers and a new provider's calibration are paid on top, and shown")
    sm.add_argument("--deadline", type=finite, default=60.0,
                    help="seconds from now (default 60); for a model job, per shard (default 600)")
    sm.add_argument("--providers", type=int, default=3,
                    help="ask this many providers for bids (default 3); map: run on this many at once")
    sm.add_argument("--backend", default="", help="cuda, cupy, numpy, ort-cpu or ort-cuda (default: any)")
    sm.add_argument("--verify", default="auto", choices=["auto", "none", "freivalds"],
                    help="how to check the result (a model job: auto or none)")
    sm.add_argument("--fresh", action="store_true",
                    help="map/infer: compute everything again, forgetting the shards an earlier run finished")
    sm.add_argument("--json", action="store_true", help="print JSON")
    cli_train.add_arguments(sm)
    cn = sub.add_parser("cancel", parents=[common], help="stop a running job or map (its providers are told)",
                        description="Stop a job or map that this node runs for you, named by the start of its id "
                                    "(`p2pnode jobs` lists them; a shard's job id names its map). Its jobs are "
                                    "cancelled at their providers; a map keeps its finished shards for a rerun.")
    cn.add_argument("id", help="a job or map id, or its first characters (at least 4)")
    cn.add_argument("--json", action="store_true", help="print JSON")
    jb = sub.add_parser("jobs", parents=[common], help="live and past jobs of the running node")
    jb.add_argument("--json", action="store_true", help="print JSON")


def _add_ledger(sub: Any, common: argparse.ArgumentParser) -> None:
    """``ledger``, ``reputation`` and ``credits``: what this node remembers."""
    lg = sub.add_parser("ledger", help="verify, show or export this node's signed ledger")
    lsub = lg.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    lv = lsub.add_parser("verify", parents=[common], help="check the whole chain and every signature")
    lv.add_argument("--file", type=Path, help="verify an export (JSON lines or CBOR) from any node instead")
    lv.add_argument("--json", action="store_true", help="print JSON")
    ls = lsub.add_parser("show", parents=[common], help="list entries")
    ls.add_argument("--kind", help="only entries of this kind")
    ls.add_argument("--peer", help="only entries about this peer id")
    ls.add_argument("--last", type=int, default=50, help="the last N matching entries (default 50; 0: all)")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    le = lsub.add_parser("export", parents=[common], help="write the ledger for others to verify")
    le.add_argument("--format", choices=["jsonl", "cbor"], default="jsonl", help="jsonl (default) or cbor")
    le.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    rp = sub.add_parser("reputation", parents=[common], help="this node's reputation table of its peers")
    rp.add_argument("--json", action="store_true", help="print JSON")
    cr = sub.add_parser("credits", parents=[common],
                        help="compute given to and received from each peer, from the signed receipts")
    cr.add_argument("--json", action="store_true", help="print JSON")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(config_from(args))
        if args.command == "swarm":
            return _swarm(args)
        if args.command == "sim":
            return _sim(args)
        return _read_command(args)
    except Interrupted as exc:  # Ctrl-C: the node stopped the work and said what it paid
        print(f"p2pnode: stopped: {exc}", file=sys.stderr)
        return 130
    except P2PNodeError as exc:
        print(f"p2pnode: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _sim(args: argparse.Namespace) -> int:
    from p2pnode import scenario as sc
    from p2pnode.sim import run_sim

    if args.nodes is not None and not 3 <= args.nodes <= sc.MAX_NODES:
        raise LocalError(f"--nodes must be between 3 and {sc.MAX_NODES}")
    if args.duration is not None and not 1 <= args.duration <= 86400:
        raise LocalError("--duration must be between 1 and 86400 seconds")
    if not 0 <= args.latency_ms <= 10_000 or not 0.1 <= args.bandwidth_mbps <= 1e6 or not 0 <= args.speed_spread <= 3:
        raise LocalError("--latency-ms 0..10000, --bandwidth-mbps 0.1..1e6, --speed-spread 0..3")
    if not 2 <= args.ad_interval < args.ad_ttl <= 300:
        raise LocalError("--ad-interval must be at least 2 and below --ad-ttl, which is at most 300")
    code, _ = run_sim(sc.load(args.scenario), out=args.out, as_json=args.json, nodes=args.nodes,
                      duration=args.duration, seed=args.seed, base_ms=args.latency_ms,
                      bandwidth_mbps=args.bandwidth_mbps, speed_spread=args.speed_spread,
                      ad_interval=args.ad_interval, ad_ttl=args.ad_ttl, paced=not args.flood)
    return code


def _swarm(args: argparse.Namespace) -> int:
    if args.nodes is not None and not 1 <= args.nodes <= 10_000:
        raise LocalError("--nodes must be between 1 and 10000")
    if args.cheat:
        from p2pnode.adversary import Adversary

        Adversary.parse(args.cheat)
    if args.ui:
        from p2pnode.web.server import is_loopback, split_listen

        if not is_loopback(split_listen(args.ui)[0]):
            raise LocalError(f"--ui {args.ui}: the swarm view serves loopback only (127.0.0.1:PORT)")
    if args.action == "run":
        from p2pnode import scenario as sc
        from p2pnode.swarm.runner import run_scenario

        if args.scenario is None:
            raise LocalError("swarm run needs a scenario file, e.g. tools/scenarios/baseline.toml")
        spec = sc.load(args.scenario)
        if args.nodes:
            spec = spec.scaled(args.nodes)
        code, _ = run_scenario(spec, out=args.out, as_json=args.json, isolate=not args.no_isolate,
                               in_process=args.in_process, ui=args.ui)
        return code
    if args.action in ("up", "status", "down", "logs"):
        from p2pnode.swarm import background

        return background.command(args)
    from p2pnode.swarm import run_swarm

    nodes = args.nodes or 5
    if not 1 <= nodes <= 64:
        raise LocalError("the demo runs 1 to 64 nodes (scenarios run more: swarm run)")
    return run_swarm(nodes, keep=args.keep, as_json=args.json, timeout=args.timeout, base=args.dir, cheat=args.cheat)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _read_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    config = config_from(args)
    console = Console()
    if args.command == "id":
        from p2pnode.identity import load_or_create

        identity, created = load_or_create(config.data_dir)
        result: dict[str, Any] = {"peer": identity.peer_id_b58, "addrs": [], "running": False}
        try:
            result.update(call(config.control_socket, "id"), running=True)
        except LocalError:
            pass
        if args.json:
            _print_json(result)
        else:
            print(result["peer"])
            for a in result["addrs"]:
                print(f"  {a}")
        return 0
    if args.command == "submit":
        return _submit(config, args, console)
    if args.command == "ledger":
        return _ledger(config, args, console)
    if args.command == "reputation":
        return _reputation(config, args, console)
    if args.command == "credits":
        return _credits(config, args, console)
    if args.command == "cancel":
        return _cancel(config, args, console)
    if args.command == "ui":
        return _ui(config, args)
    answer: Any = call(config.control_socket, args.command)
    if args.json:
        _print_json(answer)
        return 0
    from p2pnode import ui

    if args.command == "peers":
        console.print(ui.peers_table(answer))
    elif args.command == "market":
        console.print(ui.market_table(answer))
    elif args.command == "jobs":
        console.print(ui.jobs_table(answer))
    elif args.command == "status":
        console.print(ui.status_text(answer), end="")
        return 0 if answer["state"] != "error" else 2
    elif args.command in ("pause", "resume"):
        state = "paused" if answer["paused"] else "taking jobs"
        if answer["paused"] and not answer.get("operator") and answer.get("off_schedule"):
            state = "paused by its schedule until its next window"
        console.print(f"{state}; {answer['running']} job(s) running")
    return 0


def _ui(config: Config, args: argparse.Namespace) -> int:
    """The dashboard's login address: the node says where it listens, the token file what to show."""
    from p2pnode.web.guard import load_or_create_token

    address = call(config.control_socket, "ui")["address"]
    if not address:
        raise LocalError("this node runs without its dashboard (ui = \"\" or --no-ui): start it with --ui HOST:PORT")
    url = f"http://{address}/"
    login = f"{url}login?token={load_or_create_token(config.data_dir)}"
    if args.json:
        _print_json({"url": url, "login": login})
    else:
        print(login)
    return 0


def _cancel(config: Config, args: argparse.Namespace, console: Any) -> int:
    from p2pnode.services.operations import describe_paid

    answer = call(config.control_socket, "cancel", timeout=60, id=args.id)
    if args.json:
        _print_json(answer)
    else:
        console.print(f"{answer['state']}: {answer['kind']} {answer['id']}; {describe_paid(answer['paid'])}",
                      highlight=False)
    return 0


def _ledger(config: Config, args: argparse.Namespace, console: Any) -> int:
    from p2pnode import ui
    from p2pnode.errors import ChainError
    from p2pnode.ledger.store import FILE_NAME, Ledger, verify_file

    action = args.ledger_command
    try:
        if action == "verify":
            if args.file is not None:
                report = verify_file(args.file)
            else:
                with Ledger.inspect(config.data_dir / FILE_NAME) as ledger:
                    report = ledger.verify()
        elif action == "export":
            with Ledger.inspect(config.data_dir / FILE_NAME) as ledger:
                if args.output is None:
                    n = ledger.export(sys.stdout.buffer, args.format)
                else:
                    with open(args.output, "wb") as out:
                        n = ledger.export(out, args.format)
                    console.print(f"exported {n} entries to {args.output}", highlight=False)
            return 0
        else:
            return _ledger_show(config, args, console)
    except ChainError as exc:
        print(f"p2pnode: error: the ledger does not verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(report.to_json())
    else:
        console.print(ui.ledger_report(report.to_json()))
    return 0


def _ledger_show(config: Config, args: argparse.Namespace, console: Any) -> int:
    from collections import deque

    from p2pnode import ui
    from p2pnode.ledger.store import FILE_NAME, Ledger
    from p2pnode.wire.peer_id import from_base58

    peer = from_base58(args.peer) if args.peer else None
    with Ledger.inspect(config.data_dir / FILE_NAME) as ledger:
        it = ledger.entries(kind=args.kind, peer=peer)
        entries = [e.to_json() for e in (deque(it, maxlen=args.last) if args.last > 0 else it)]
    if args.json:
        for e in entries:
            print(json.dumps(e, sort_keys=True))
    else:
        console.print(ui.ledger_table(entries))
    return 0


def _credits(config: Config, args: argparse.Namespace, console: Any) -> int:
    from p2pnode import ui
    from p2pnode.services.trust import offline_credits

    return _from_node_or_ledger(config, args, console, "credits", offline_credits, ui.credits_table)


def _reputation(config: Config, args: argparse.Namespace, console: Any) -> int:
    from p2pnode import ui
    from p2pnode.services.trust import offline_table

    return _from_node_or_ledger(config, args, console, "reputation", offline_table, ui.reputation_table)


def _from_node_or_ledger(config: Config, args: argparse.Namespace, console: Any, cmd: str,
                         offline: Callable[[Config], Any], render: Callable[[Any], Any]) -> int:
    """A view from the running node, or, when it does not run, folded from its ledger on disk
    (as the node does at start)."""
    try:
        view = call(config.control_socket, cmd)
    except LocalError:
        view = offline(config)
    if args.json:
        _print_json(view)
    else:
        console.print(render(view))
    return 0


def _run(config: Config) -> int:
    import trio

    from p2pnode.node import Node
    from p2pnode.telemetry import logs

    logs.setup(config.log_level, config.log_format)

    def say(text: str) -> None:
        logs.say(text, config.log_format)

    async def main() -> None:
        node = Node(config)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(node.run)
                say(f"p2pnode {__version__} peer {node.peer_id}")
                for addr in node.addrs():
                    say(f"listening on {addr}")
                if node.ui_address:  # before the metrics line: launchers take that one as "ready"
                    say(f"dashboard on http://{node.ui_address}/ (`p2pnode ui` prints its login address)")
                if node.config.metrics:
                    say(f"metrics on http://{node.metrics.address}/metrics")
                async for signum in signals:
                    say(f"received {signal.Signals(signum).name}, shutting down")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        local = group.subgroup(lambda e: isinstance(e, P2PNodeError))
        if local is None:
            raise
        raise unwrap_group(local, first=True) from None
    return 0


def _submit_model(config: Config, args: argparse.Namespace, console: Any) -> int:
    """``submit infer|map --model M.onnx --input DATA [--output OUT]``: run on the node, which reads
    the files (same user) and writes the output."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pnode import model_io, ui

    if args.workload not in ("infer", "map"):
        raise LocalError(f"--model goes with infer or map, not {args.workload}")
    if args.model is None:
        raise LocalError("map needs --model PATH.onnx")
    text_file = args.text
    if text_file is not None:
        if args.input:
            raise LocalError("give --text or --input, not both")
        if args.max_tokens < 1:
            raise LocalError("--max-tokens must be at least 1")
    elif len(args.input) != 1 or "=" in args.input[0]:
        raise LocalError("a model job needs one --input FILE (.npy, or .npz with one array per model input), "
                         "or --text FILE (.txt or .jsonl) to tokenize")
    if args.verify == "freivalds":
        raise LocalError("--verify freivalds checks matrix products (matmul) only: a model job is checked by "
                         "re-running sampled rows or whole shards elsewhere (auto), or not at all (none)")
    output = str(args.output.resolve()) if args.output else ""
    if output:
        model_io.check_output(output)  # before anything is sent or paid for
    if args.shard_rows < 0 or args.providers < 1:
        raise LocalError("--shard-rows must not be negative and --providers must be at least 1")
    data = text_file if text_file is not None else Path(args.input[0])
    if not (args.model.is_file() or args.model.is_dir()):
        raise LocalError(f"no such file: {args.model}")
    if not data.is_file():
        raise LocalError(f"no such file: {data}")
    deadline = args.deadline if args.deadline != 60.0 else 600.0
    cmd = "map" if args.workload == "map" else "submit"
    request = dict(model=str(args.model.resolve()), output=output,
                   **({"text": str(data.resolve()), "max_tokens": args.max_tokens} if text_file is not None
                      else {"input": str(data.resolve())}), max_price=args.max_price, deadline=deadline,
                   providers=args.providers if cmd == "map" else 1, shard_rows=args.shard_rows, backend=args.backend,
                   verify=args.verify, fresh=args.fresh)
    timeout = deadline + 60
    if args.json:
        result = call(config.control_socket, cmd, timeout=timeout, **request)
        _print_json(result)
        return 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console)
    with progress:
        rows = progress.add_task("rows", total=None, speed="")
        providers: dict[str, int] = {}

        def on_event(e: dict[str, Any]) -> None:
            kind = e.get("event")
            if kind == "note":
                progress.console.print(f"  [yellow]note: {escape(str(e['text']))}[/]", highlight=False)
            elif kind == "map":
                progress.update(rows, total=e["rows"], completed=e["rows"] if e.get("already_done") else 0,
                                description=f"{e['shards']} shard(s)" + (f", {e['resumed']} resumed" if e["resumed"]
                                                                        else ""))
                if e["verify"] == "none":
                    progress.console.print("  [yellow]not checked (--verify none): results are taken as they "
                                           "come[/]")
                elif e["verify"] != "rows":
                    why = f" ({e['coupling']})" if e.get("coupling") else ""
                    progress.console.print(f"  [yellow]this model couples its rows{why}: it runs as one job on "
                                           "all rows at once, checked by re-running that job[/]", highlight=False)
            elif kind == "shard" and e.get("state") == "done":
                providers[e["provider"]] = providers.get(e["provider"], 0) + e["rows"]
                progress.update(rows, completed=e["rows_done"], speed=f"{e['rows_per_s']:.0f} rows/s",
                                description=f"shards {e['done']}/{e['shards']}")
                progress.console.print(f"  shard {e['shard']} by {ui.short_peer(e['provider'])}: {e['rows']} rows, "
                                       f"{e['outcome']}")
            elif kind == "shard" and e.get("state") == "retry":
                progress.console.print(f"  [yellow]shard {e['shard']} again elsewhere: {e['outcome']}[/]")

        result = call(config.control_socket, cmd, timeout=timeout, on_event=on_event, **request)
    console.print(ui.map_summary(result))
    return 0


def _submit_generate(config: Config, args: argparse.Namespace, console: Any) -> int:
    """``submit generate --model DIR --prompts FILE [--output OUT.jsonl]``: run on the node, which
    reads the files (same user) and writes the generations; progress in tokens/s per provider."""
    from rich.markup import escape

    from p2pnode import text_data, ui

    if args.model is None or args.prompts is None:
        raise LocalError("generate needs --model (a folder with model.onnx and tokenizer.json) and --prompts FILE")
    if not (args.model.is_file() or args.model.is_dir()):
        raise LocalError(f"no such file: {args.model}")
    if not args.prompts.is_file():
        raise LocalError(f"no such file: {args.prompts}")
    if args.max_new_tokens < 1 or args.temperature < 0 or args.seed < 0 or args.providers < 1:
        raise LocalError("--max-new-tokens and --providers must be at least 1, --temperature and --seed not negative")
    if args.verify == "freivalds":
        raise LocalError("--verify freivalds checks matrix products only: generation is checked by a teacher-forced "
                         "pass over sampled prompts elsewhere (auto), or not at all (none)")
    output = str(args.output.resolve()) if args.output else ""
    if output:
        text_data.check_generation_output(output)  # before anything is sent or paid for
    deadline = args.deadline if args.deadline != 60.0 else 600.0
    request = dict(model=str(args.model.resolve()), prompts=str(args.prompts.resolve()), output=output,  # noqa: C408
                   max_new=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                   max_tokens=args.max_tokens, max_price=args.max_price, deadline=deadline, providers=args.providers,
                   shard_rows=args.shard_rows, backend=args.backend, verify=args.verify, fresh=args.fresh)
    if args.json:
        _print_json(call(config.control_socket, "generate", timeout=deadline + 60, **request))
        return 0

    def on_event(e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "note":
            console.print(f"  [yellow]note: {escape(str(e['text']))}[/]", highlight=False)
        elif kind == "shard" and e.get("state") == "done":
            console.print(f"  shard {e['shard']} by {ui.short_peer(e['provider'])}: {e['rows']} prompts, "
                          f"{e.get('tokens', 0)} tokens at {e.get('tokens_per_s', 0):.0f} tokens/s; {e['outcome']}",
                          highlight=False)
        elif kind == "shard" and e.get("state") == "retry":
            console.print(f"  [yellow]shard {e['shard']} again elsewhere: {e['outcome']}[/]", highlight=False)

    result = call(config.control_socket, "generate", timeout=deadline + 60, on_event=on_event, **request)
    gen = result["generate"]
    console.print(f"[bold green]DONE[/]  {gen['prompts']} prompts, {gen['tokens']} tokens in {result['seconds']:.2f} s "
                  f"({gen['tokens_per_s']:.0f} tokens/s); checked: {result['checked_rows']} sampled prompts "
                  f"teacher-forced; {result['retries']} shard(s) redone elsewhere", highlight=False)
    if result.get("saved"):
        console.print(f"  saved to {result['saved']['path']}", highlight=False)
    return 0


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LocalError(f"--param {item!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = value
        if isinstance(params[key], float) and not math.isfinite(params[key]):
            raise LocalError(f"--param {item!r}: {value!r} is not a finite number")
    return params


def _submit(config: Config, args: argparse.Namespace, console: Any) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from p2pnode import ui
    from p2pnode.exec import workloads

    if args.workload == "generate":
        return _submit_generate(config, args, console)
    if args.workload == "train":
        return cli_train.submit_train(config, args, console)
    if args.model is not None or args.workload == "map":
        return _submit_model(config, args, console)
    params = _parse_params(args.param)
    wl = workloads.get(args.workload)
    if not wl.input_spec(wl.check(params)) and args.input:  # bad input fails here, before the network
        raise LocalError("--input needs -p inputs=blob")
    if args.deadline <= 0:
        raise LocalError("--deadline must be in the future (seconds from now)")
    output = str(args.output.resolve()) if args.output else ""
    if output:
        from p2pnode import model_io

        model_io.check_output(output)  # before anything is sent or paid for
    files = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LocalError(f"--input {item!r}: expected NAME=FILE.npy")
        files[name] = str(Path(path).resolve())
    request = dict(workload=args.workload, params=params, max_price=args.max_price, deadline=args.deadline,
                   k=args.providers, backend=args.backend, verify=args.verify, input_files=files, output=output)
    if args.json:
        result = call(config.control_socket, "submit", timeout=args.deadline + 30, **request)
        _print_json(result)
        return 0 if result["state"] == "done" else 3
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=console, transient=False)
    with progress:
        bids = progress.add_task("bids", total=args.providers)
        run = progress.add_task("execution", total=1.0, visible=False)

        def on_event(e: dict[str, Any]) -> None:
            kind = e.get("event")
            if kind in ("bid", "decline"):
                progress.advance(bids)
                what = f"{e.get('price')} µcr" if kind == "bid" else e.get("code")
                progress.console.print(f"  {kind} from {ui.short_peer(e['peer'])}: {what}")
            elif kind == "award":
                progress.update(bids, completed=args.providers)
                progress.update(run, visible=True, completed=0)
                progress.console.print(f"  award to {ui.short_peer(e['provider'])} at {e['price']} µcr "
                                       f"(attempt {e['attempt']})")
            elif kind == "progress":
                progress.update(run, completed=float(e.get("fraction", 0)))
            elif kind == "lost":
                progress.console.print(f"  [yellow]provider {ui.short_peer(e['provider'])} lost: {e['reason']}[/]")
            elif kind == "result":
                progress.update(run, completed=1.0)
                progress.console.print("  result received; verifying")
            elif kind == "calibrate":
                progress.console.print(f"  [yellow]first contact with {ui.short_peer(e['peer'])}: a calibration job "
                                       f"({e['n']}³ matmul) at about {e['cost']} µcr (at most {e['max_price']}), "
                                       "paid on top of this job[/]", highlight=False)
            elif kind == "calibration_skipped":
                progress.console.print(f"  first contact with {ui.short_peer(e['peer'])}: its calibration would cost "
                                       f"{e['cost']} µcr, more than this job's {e['limit']}: not done now",
                                       highlight=False)
            elif kind == "upload":
                progress.console.print(f"  inputs: {e['blobs']} encrypted blob(s), {e['bytes']} bytes, "
                                       "fetched by the awarded provider")
            elif kind == "download":
                progress.console.print(f"  output: {e['bytes']} bytes downloaded in {e['seconds']} s")

        result = call(config.control_socket, "submit", timeout=args.deadline + 30, on_event=on_event, **request)
    console.print(ui.job_summary(result))
    return 0 if result["state"] == "done" else 3
