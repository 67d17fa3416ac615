"""The hospital network on NVIDIA FLARE (``pip install "hospitalnet[nvflare]"``, nvflare 2.9.0).

NVFlare does what it is known for: provisioning (startup kits, certificates), mutual TLS between
each hospital and the NVFlare server, relaying messages, the admin console. What runs inside it
stays ours, unchanged: the site loop (:class:`~hospitalnet.site.SiteNode`, built by
:func:`hospitalnet.assembly.build_site` through :func:`hospitalnet.deploy.site_process.run_site`),
the algorithms, our per-edge liveness, checkpoints and the run directory.

Modules, in the order a run goes:

- :mod:`.job` writes an NVFlare job (``hospitalnet nvflare job``): one app per hospital, one for
  the server, our config and network plan inside.
- :mod:`.controller` (NVFlare server): hands every hospital the one training task, releases the
  common start once every hospital is ready, hosts the FedAvg/FedProx server loop when the method
  needs one, and ends when every live hospital has answered.
- :mod:`.executor` (each hospital): runs ``run_site`` for its manifest with the NVFlare transport
  (:mod:`hospitalnet.transport.nvflare`).
- :mod:`.engine`: ``hospitalnet simulate --engine nvflare``, the NVFlare simulator on this
  machine, gathered into the run directory every other mode writes.

Nothing here is imported by the core package; NVFlare is imported only in these modules.
"""

#: the one task every hospital runs
TRAIN_TASK = "hospitalnet_train"
#: the task's data: the NVFlare server's identity, which the site loop calls ``server``
SERVER_IDENTITY = "server_identity"
#: hospital -> NVFlare server: "my neighbours answered, I am ready to start"
READY_TOPIC = "hospitalnet.ready"
#: NVFlare server -> hospital: the common start time (epoch seconds, as text)
START_TOPIC = "hospitalnet.start"
