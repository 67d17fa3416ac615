"""Deployment: each hospital (and the FedAvg server) as its own process, on one machine or many.

Data flow step: site loop -> **deployment** -> run directory (the other runner being the
in-process :mod:`hospitalnet.simulation`). Every process builds its site with
:mod:`hospitalnet.assembly`, exactly as the simulation does, and runs the same loop
(:mod:`hospitalnet.site`); only the transport (gRPC with mutual TLS, or NVIDIA FLARE's aux
messages) and the clock (seconds) differ. Modules, in the order a run goes:

- :mod:`~hospitalnet.deploy.liveness`        deadlines, heartbeats, the common start, restart-safe
                                             sequence numbers
- :mod:`~hospitalnet.deploy.site_process`    ``hospitalnet site run``: data, site, checkpoints, loop
- :mod:`~hospitalnet.deploy.site_outputs`    a site process's own run directory
- :mod:`~hospitalnet.deploy.server_process`  ``hospitalnet server run``: the FedAvg / FedProx server
- :mod:`~hospitalnet.deploy.launcher`        ``hospitalnet simulate --processes``: eight (or nine)
                                             child processes on 127.0.0.1
- :mod:`~hospitalnet.deploy.collect`         their run directories merged into one
- :mod:`~hospitalnet.deploy.nvflare`         the same site run inside NVIDIA FLARE (job, executor,
                                             controller, simulator, POC)
"""
