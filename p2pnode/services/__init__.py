"""The node's services: the trio shell around the pure core, one protocol's I/O each.

Every service is built from the narrow collaborators it uses (:mod:`p2pnode.services.ports`:
``now``, ``penalise``, a ledger recorder, streams, ...), never from the node, so each one is built in
a test from fakes and a virtual clock. ``node.py`` composes them and nothing else.

=================  ===================  ================================================================
module             service              built from
=================  ===================  ================================================================
``peers``          ``PeerPolicy``       penalty book, now, metrics, remember (ledger), network
``market``         ``MarketService``    identity, now, table, metrics, is_banned, penalise, publish,
                                        ad settings, resources, probe, executor, adversary, addrs, peers
``blobs``          ``BlobService``      streams, penalise, is_banned, the bulk channel's server
``trust``          ``TrustService``     id and key, ledger path, reputation, policy, now, penalise,
                                        is_banned, publish
``provider``       ``JobProvider``      identity, now, executor, capacity, blobs, recorder, penalise,
                                        job book, adversary
``checks``         ``Checks``           id, now, judge, candidates, submit, latency, calibrate? (runs
                                        what a verdict asks for, and the calibration job)
``conversation``   ``Conversation``     one job's pipeline, now, streams, penalise, answer, carry (the
                                        streams to its providers)
``requester``      ``JobRequester``     identity, now, table, is_banned, judge, blobs, streams,
                                        penalise, job book (owns its ``Checks`` and bid scorer; drives
                                        one ``protocol.job_pipeline.RequesterPipeline`` per job)
``jobs``           ``JobService``       a provider and a requester over one job book
``mapper``         ``MapService``       submit, candidates, now, state dir, job book (dataset jobs in
                                        shards)
``trainer``        ``TrainService``     submit, candidates, now, state dir, job book (training jobs in
                                        rounds across providers)
``model_prep``     ``ModelPrep``        the executor as a prober (or how to start a small one)
=================  ===================  ================================================================

``operations`` holds what a user's request paid (``Spending``) and the runs that can be cancelled
(``Runs``); it is no service and imports none.

Imports point one way, and never at ``p2pnode.node`` (``tests/services`` checks it)::

    ports  <-  records, blobs, trust, peers, market, mapper, model_prep, conversation
    ports, records  <-  checks
    ports, records, blobs  <-  provider
    ports, records, blobs, checks, conversation, operations  <-  requester
    ports, records, operations  <-  mapper
    ports, records, operations, mapper (its atomic file writes)  <-  trainer
    records, provider, requester  <-  jobs

``trust`` is known to the job services only as the ``Judge`` / ``Recorder`` protocols of ``ports``,
and the executor as ``Runner``: they do not import them.
"""
