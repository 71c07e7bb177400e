"""The simulator: the node's own core on a modelled network, in virtual time, at 10,000 nodes.

``p2pnode sim SCENARIO.toml [--nodes N] [--json]`` takes the scenario files of ``swarm run`` and
gives the same summary, judged against the same expectations, plus traffic per node and the
simulator's own speed. :mod:`~p2pnode.sim.engine` is the clock, the network and the gossip mesh;
:mod:`~p2pnode.sim.world` the nodes, built from the node's state machines, market table, checks,
reputation and ledger; :mod:`~p2pnode.sim.ask` each job, a driver of the node's own requester
pipeline; :mod:`~p2pnode.sim.run` the scenario's course and its summary.
"""

from p2pnode.sim.run import run_sim, simulate

__all__ = ["run_sim", "simulate"]
