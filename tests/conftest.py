"""Shared fixtures: an emulated cluster per test, a CNI bin dir with the installed shim."""
from __future__ import annotations

import os

import pytest

from lab.cluster import Cluster
from lab.runtime import Runtime

ALL_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def runtime(tmp_path_factory) -> Runtime:
    """A CNI bin dir holding `megalos` exactly as the DaemonSet installs it."""
    return Runtime(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def node(cluster):
    """One emulated node running megalos-agent (no control plane)."""
    n = cluster.add_node("n1")
    n.start_agent()
    return n
