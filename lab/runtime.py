"""Call a CNI plugin the way a container runtime does: exec with CNI_* env and the config on stdin."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cni.install_shim import install


@dataclass
class CniReply:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None

    def __str__(self):
        return f"exit {self.code}: {self.stdout.strip()} {self.stderr.strip()}".strip()


def kathara_conf(name: str, vni: int, version: str = "0.3.0", **extra) -> dict:
    """The exact config Kathara puts in a NetworkAttachmentDefinition (plus `extra` keys)."""
    conf = {"cniVersion": version, "name": name, "type": "megalos", "suffix": "abcdef",
            "vxlanId": vni}
    conf.update(extra)
    return conf


def shim_kinds() -> tuple[str, ...]:
    """The shim kinds this machine can install: 'c' (cni/shim.c, what the DaemonSet installs)
    needs a C compiler; 'python' (cni/shim.py) always works here."""
    return ("c", "python") if shutil.which(os.environ.get("CC") or "cc") else ("python",)


class Runtime:
    """Raw-exec CNI caller with a private CNI bin dir holding the installed `megalos` shim
    of kind `shim` (default: the C one when a compiler is at hand)."""

    def __init__(self, bin_dir: Path, plugin: str = "megalos", shim: str = ""):
        self.bin_dir = Path(bin_dir)
        self.plugin = plugin
        self.shim = shim or shim_kinds()[0]
        if plugin == "megalos" and not (self.bin_dir / plugin).exists():
            install(str(self.bin_dir), kind=self.shim)

    def call(self, command: str, conf: dict | str | None, container_id: str = "", netns: str = "",
             ifname: str = "", args: str = "", socket: str = "", env: dict | None = None,
             timeout: float = 60) -> CniReply:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                   "CNI_PATH": str(self.bin_dir)}
        for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns),
                           ("CNI_IFNAME", ifname), ("CNI_ARGS", args),
                           ("MEGALOS_AGENT_SOCKET", socket)):
            if value:
                environ[key] = value
        environ.update(env or {})
        stdin = conf if isinstance(conf, str) else json.dumps(conf) if conf is not None else ""
        proc = subprocess.run([str(self.bin_dir / self.plugin)], input=stdin, env=environ,
                              capture_output=True, text=True, timeout=timeout)
        return CniReply(proc.returncode, proc.stdout, proc.stderr)

    def add_kathara_pod(self, node, name: str, vni: int, mac: str):
        """A new pod on `node` (lab.cluster.Node) attached by ADD, as Kathara's NAD for `vni`
        does, with `mac` as its MAC (the device's net0); the pod. RuntimeError if refused."""
        pod = node.add_pod(name)
        reply = self.call("ADD", kathara_conf(f"lan{vni}", vni), container_id=f"c-{pod.netns}",
                          netns=pod.netns_path, ifname="net0", args=f"MAC={mac}", socket=node.socket)
        if reply.code != 0:
            raise RuntimeError(f"ADD on {node.name}: {reply}")
        return pod
