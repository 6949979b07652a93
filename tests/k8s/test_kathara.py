"""Kathara's own `lstart` against the cluster: the real `kathara` package (3.8.3, Kubernetes
manager, unchanged) in its own virtual environment (.venv-kathara, `make test-k8s` makes it,
with a kubernetes client it works with), a lab of four devices on three LANs with the locally
built device image; the devices reach each other over their LANs, the LANs stay apart, and
`kathara lclean` leaves nothing behind."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from cni import naming
from tests.k8s.conftest import ROOT, wait_for

pytestmark = pytest.mark.k8s
KATHARA_PYTHON = ROOT / ".venv-kathara" / "bin" / "python"  # kathara ships no script: python -m kathara

# device: [(interface, LAN, address)]. LAN C reuses LAN A's subnet: only the LAN keeps pc4 away.
LAB = {
    "pc1": [("net0", "A", "198.19.101.1/24"), ("net1", "B", "198.19.102.1/24")],
    "pc2": [("net0", "A", "198.19.101.2/24")],
    "pc3": [("net0", "B", "198.19.102.3/24")],
    "pc4": [("net0", "C", "198.19.101.4/24")],
}
# (from, to address): every LAN, each way it is used.
REACHABLE = [("pc2", "198.19.101.1"), ("pc1", "198.19.101.2"), ("pc3", "198.19.102.1"),
             ("pc1", "198.19.102.3")]
ISOLATED = [("pc2", "198.19.101.4"), ("pc4", "198.19.101.1"), ("pc4", "198.19.101.2")]


def write_lab(directory) -> None:
    lines = []
    for device, interfaces in LAB.items():
        for index, (_, lan, _) in enumerate(interfaces):
            lines.append(f'{device}[{index}]="{lan}"')
        # Lab interface ethN is the pod's netN on Kubernetes (eth0 is the cluster network's).
        (directory / f"{device}.startup").write_text("".join(
            f"ip addr add {address} dev {interface}\n" for interface, _, address in interfaces))
    (directory / "lab.conf").write_text("\n".join(lines) + "\n")


@pytest.fixture
def kathara(megalos, tmp_path):
    if not KATHARA_PYTHON.exists():
        pytest.fail(f"{KATHARA_PYTHON} is missing: `make kathara-venv` (make test-k8s does it)")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    settings = {
        "image": megalos.env["DEVICE_IMAGE"], "manager_type": "kubernetes",
        "open_terminals": False, "print_startup_log": False, "device_shell": "/bin/bash",
        "net_prefix": "kathara", "device_prefix": "kathara", "debug_level": "INFO",
        "enable_ipv6": False, "last_checked": time.time(), "terminal": "/usr/bin/xterm",
        "volume_mount_policy": "Always",
        # No hostPath into the node's /home: nothing of the lab outlives it there.
        "host_shared": False, "image_pull_policy": "IfNotPresent",
        "api_server_url": "Empty String", "api_token": "Empty String",
        "docker_config_json": "Empty String",
    }
    (home / ".config" / "kathara.conf").write_text(json.dumps(settings))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "KUBECONFIG": megalos.env["KUBECONFIG"],
           "LANG": "C.UTF-8"}
    lab = tmp_path / "lab"
    lab.mkdir()
    write_lab(lab)
    # Kathara reads its settings from the passwd home's .config (root's /root/.config/kathara.conf,
    # written with defaults when missing), not from $HOME: it runs in a private mount namespace
    # where that directory is this test's, so it reads these settings and writes nothing there.
    config = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".config"
    made_config = not config.exists()
    config.mkdir(exist_ok=True)
    private_config = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount --bind "$0" "$1" && shift && exec "$@"',
                      str(home / ".config"), str(config)]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*private_config, str(KATHARA_PYTHON), "-m", "kathara", *args],
                              cwd=lab, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    yield run
    run("lclean", "-d", str(lab))
    if made_config:
        config.rmdir()


def reaches(kathara, device: str, address: str) -> bool:
    return kathara("exec", device, "--", "ping", "-c", "1", "-W", "2", address,
                   timeout=60).returncode == 0


def test_kathara_lstart_lans_answer_and_lclean_leaves_nothing(kathara, megalos, timings):
    t0 = time.monotonic()
    started = kathara("lstart", "--noterminals", timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    namespaces = [ns["metadata"]["name"] for ns in megalos.get("namespaces")["items"]
                  if ns["metadata"]["name"] not in ("default", "megalos") and
                  not ns["metadata"]["name"].startswith(("kube-", "mk8s-"))]
    (lab_namespace,) = namespaces
    nads = megalos.get("-n", lab_namespace, "network-attachment-definitions")["items"]
    vnis = {json.loads(n["spec"]["config"])["vxlanId"] for n in nads}
    assert len(vnis) == 3

    for device, address in REACHABLE:
        wait_for(f"{device} to reach {address}", lambda d=device, a=address: reaches(kathara, d, a),
                 timeout=120)
    timings["kathara lstart -> every LAN answers (s)"] = time.monotonic() - t0
    for device, address in ISOLATED:
        assert not reaches(kathara, device, address), f"{device} reached {address} across LANs"

    cleaned = kathara("lclean")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    wait_for("the lab's namespace to go", lambda: lab_namespace not in {
        ns["metadata"]["name"] for ns in megalos.get("namespaces")["items"]}, timeout=180)
    names = {naming.vtep_name(vni) for vni in vnis} | {naming.bridge_name(vni) for vni in vnis}

    def nothing_left():
        links = {link["ifname"] for link in megalos.node_links()}
        return not (links & names) and not {n for n in links if n.startswith("mgp")}

    wait_for("the lab's devices to leave the node", nothing_left, timeout=60)
