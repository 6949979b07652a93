"""The image built from k8s/Dockerfile (`make image`, buildah), run by the cluster's containerd:
each program the manifests start is there and runs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.k8s.conftest import wait_for

pytestmark = pytest.mark.k8s
REPO = Path(__file__).resolve().parents[2]

# One shell line per program a manifest runs; each prints a marker only when it succeeded.
CHECKS = {
    "agent": "megalos-agent --help >/dev/null",
    "reflector": "megalos-reflector --help >/dev/null",
    "installer": "megalos-install-shim --help >/dev/null",
    "megalosctl": "megalosctl --help >/dev/null",
    # What the API container runs, from its working directory: the configuration file is there
    # and the application factory imports from site-packages.
    "gunicorn": "cd /opt/megalos && test -f api/gunicorn.conf.py"
                " && python3 -c 'import api; api.create_app()'"
                " && gunicorn --version >/dev/null",
    # The C shim the init container copies (k8s/agent-daemonset.yaml): present, executable, and
    # answering VERSION itself, and STATUS as a CNI plugin does when no agent runs here (code 50,
    # naming the socket).
    "shim": "test -x /usr/local/libexec/megalos/megalos"
            " && echo '{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"type\":\"megalos\"}'"
            " | CNI_COMMAND=VERSION /usr/local/libexec/megalos/megalos"
            " | grep -q '\"supportedVersions\"'"
            " && echo '{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"type\":\"megalos\"}'"
            " | CNI_COMMAND=STATUS /usr/local/libexec/megalos/megalos"
            " | grep -q '\"code\": 50, \"msg\": \"megalos agent is not running'",
    # The code of this checkout, not of an earlier build (buildah's layer cache once reused an
    # install of old wheels): a module of the image is byte for byte the repository's.
    "current": "test \"$(python3 -c 'import reflector.main as m; print(m.__file__)' | xargs sha256sum"
               " | cut -d' ' -f1)\" = " + hashlib.sha256((REPO / "reflector" / "main.py").read_bytes()).hexdigest(),
    # Non-root by default, as the reflector Deployment expects.
    "user": "test \"$(id -u)\" = 65532",
}


def test_the_image_runs_every_program_the_manifests_start(kube):
    namespace = kube.namespace("mk8s-image")
    script = "; ".join(f"if {check}; then echo ok:{name}; else echo FAILED:{name}; fi"
                       for name, check in CHECKS.items())
    kube.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "image-check", "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "check", "image": kube.env["MEGALOS_IMAGE"], "imagePullPolicy": "Never",
            "command": ["sh", "-c", script]}]},
    })
    phase = wait_for("the image check pod to finish", lambda: kube.get(
        "-n", namespace, "pod", "image-check")["status"].get("phase") in ("Succeeded", "Failed"))
    assert phase
    out = kube.kubectl("-n", namespace, "logs", "image-check").stdout.split()
    assert sorted(out) == sorted(f"ok:{name}" for name in CHECKS), out

