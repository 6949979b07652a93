"""Our side of the Kubernetes API: list-then-watch (kube.watch) and the client (kube.client)."""
