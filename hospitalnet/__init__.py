"""hospitalnet: federated chest X-ray learning across hospitals that may not pool their images.

The package reads in the order the data flows::

    site data -> loader -> site loop -> simulation | deployment -> run directory
    -> evaluation -> report

Modules and subpackages, in flow order:

- ``hospitalnet.data``        site manifests, format loaders (NIH PNG, DICOM, CSV, ChestMNIST),
                              the synthetic ChestX-ray14 world and the eight-hospital partition.
- ``hospitalnet.world``       the world a run trains on, generated once and decoded.
- ``hospitalnet.models``      GroupNorm networks with a 1-channel input and 14 outputs.
- ``hospitalnet.objective``   the local-objective contract every site's data meets.
- ``hospitalnet.training``    objectives over torch models (chest X-ray, any Dataset), schedules.
- ``hospitalnet.topology``    who is adjacent to whom, and the one edge-sign convention.
- ``hospitalnet.algorithms``  ECL (PDMM/ADMM) and the baselines as pure state transitions.
- ``hospitalnet.messages``    the typed messages that cross an edge.
- ``hospitalnet.transport``   how bytes move: a simulated discrete-event network or gRPC + mTLS.
- ``hospitalnet.peers``       the receive side of every edge (replay, staleness, liveness).
- ``hospitalnet.site``        the one loop a hospital runs, in simulation and in deployment.
- ``hospitalnet.plan``        the network plan (site order, edges, sizes, addresses).
- ``hospitalnet.assembly``    the one way every runner builds a site around the loop.
- ``hospitalnet.simulation``  runner 1: the network on one machine (``experiment``: the main job).
- ``hospitalnet.deploy``      runner 2: one process per hospital and the FedAvg server.
- ``hospitalnet.checkpoint``  crash-safe checkpoints (safetensors + JSON) of a deployment.
- ``hospitalnet.rundir``      where a run's files are (``rundir_schema``: what is in them).
- ``hospitalnet.cli``         the ``hospitalnet`` command.

The separate top-level package ``evaluation`` turns a run directory into numbers and a report.
"""

__version__ = "0.1.0"
