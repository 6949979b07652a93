"""A client of the Kubernetes API for our daemons: in a pod, its ServiceAccount; outside, a kubeconfig."""
from __future__ import annotations

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


def api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """An API client: in-cluster (the pod's ServiceAccount) unless a kubeconfig is given or the
    process runs outside a pod, then the kubeconfig (`$KUBECONFIG`, `~/.kube/config`)."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s_client.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s_client.ApiClient(configuration)
