"""The one-file binary's entry point (tools/build-binary): ``p2pnode ARGS`` is the command line.

The node starts its worker processes (and a swarm its nodes) as ``sys.executable -m MODULE``; in
the binary ``sys.executable`` is the binary itself, so ``-m MODULE`` runs that module of the
bundle, as ``python -m`` would. A child of the binary reuses the files its parent unpacked.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [sys.executable, *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from p2pnode.cli import main as cli

    return cli()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
