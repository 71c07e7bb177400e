"""Local swarms of real node processes, for operators, demos, scenarios and benchmarks.

* :mod:`~p2pnode.swarm.launcher` starts and stops node processes: in parallel waves, each on its
  own loopback address, every one of them dying with the launcher (parent-death signal, its own
  process group), whatever stops the launcher (SIGINT, SIGTERM, SIGHUP, or SIGKILL);
* :mod:`~p2pnode.swarm.network` gives a swarm its own network namespace (as root) where partitions
  are routing rules between its addresses;
* :mod:`~p2pnode.swarm.runner` runs a scenario file (``p2pnode swarm run``): roles, adversaries,
  work over time, faults, expectations, a JSON summary and plots;
* :mod:`~p2pnode.swarm.demo` is the demo (``p2pnode swarm``, ``tools/demo``).
"""

from p2pnode.swarm.demo import run_swarm

__all__ = ["run_swarm"]
