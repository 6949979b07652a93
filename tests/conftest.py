"""Shared fixtures: an emulated cluster per test, a CNI bin dir with the installed shim."""
from __future__ import annotations

import os

import pytest

from lab.cluster import Cluster
from lab.runtime import Runtime, shim_kinds

ALL_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# Modules whose tests run through both shims (C and Python, identical behaviour expected);
# every other test that takes `runtime` runs through the C shim only, what the DaemonSet installs.
BOTH_SHIMS = {"test_cni_verbs", "test_cni_bad_input"}


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "shim_kind" in metafunc.fixturenames:  # the test uses the `runtime` fixture
        kinds = shim_kinds()  # ('c', 'python'), or ('python',) without a C compiler
        if metafunc.module.__name__.rsplit(".", 1)[-1] not in BOTH_SHIMS:
            kinds = kinds[:1]
        metafunc.parametrize("shim_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def runtime(tmp_path_factory, shim_kind) -> Runtime:
    """A CNI bin dir holding `megalos` as the DaemonSet installs it, of the given shim kind."""
    return Runtime(tmp_path_factory.mktemp(f"cni-bin-{shim_kind}"), shim=shim_kind)


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
