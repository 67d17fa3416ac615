"""hospitalnet: federated chest X-ray learning across hospitals that may not pool their images.

The package reads in the order the data flows::

    site data -> loader -> local steps -> messages over edges -> dual update
    -> predictions -> evaluation -> report

Subpackages, in flow order:

- ``hospitalnet.data``        site manifests, format loaders (NIH PNG, DICOM, CSV, ChestMNIST),
                              the synthetic ChestX-ray14 world and the eight-hospital partition.
- ``hospitalnet.models``      GroupNorm networks with a 1-channel input and 14 outputs.
- ``hospitalnet.training``    the local objective (masked BCE) and the pooled reference trainer.
- ``hospitalnet.topology``    who is adjacent to whom, and the one edge-sign convention.
- ``hospitalnet.algorithms``  ECL (PDMM/ADMM) and the baselines as pure state transitions.
- ``hospitalnet.messages``    the typed messages that cross an edge.
- ``hospitalnet.transport``   how bytes move: a simulated discrete-event network or gRPC + mTLS.
- ``hospitalnet.site``        the one loop a hospital runs, in simulation and in deployment.
- ``hospitalnet.simulation``  the eight-hospital network on one machine.
- ``hospitalnet.rundir``      what a run writes for the ``evaluation`` package to read.
- ``hospitalnet.cli``         the ``hospitalnet`` command.

The separate top-level package ``evaluation`` turns a run directory into numbers and a report.
"""

__version__ = "0.1.0"
