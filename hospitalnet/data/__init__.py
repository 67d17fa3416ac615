"""Site data: manifests, per-format loaders, the decoded tensor cache, the synthetic world and the
eight-hospital partition."""
