"""Where the cluster comes from, as one snapshot type (model.snapshot.Cluster) with the
changes since the last: the Kubernetes API (kubernetes: list and watch), manifest files
(files: watched and diffed; manifests: read and parsed), and for manifests the simulated
control plane that does what the API server and its controllers would (simulated:
allocations, scheduling, EndpointSlices).

May import: model, the kubernetes client. Nothing above."""
