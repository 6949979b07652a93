"""`megalos-install-shim DIR`: install the `megalos` CNI binary into a CNI bin dir, atomically.

    megalos-install-shim DIR --kind c --binary PATH    copy a prebuilt C shim (the image's)
    megalos-install-shim DIR --kind c                  compile cni/shim.c here: cc -O2 -static
    megalos-install-shim DIR [--kind python]           cni/shim.py behind #!/usr/bin/python3 -IS

Both kinds behave the same. The C one starts in ~1 ms and needs nothing on the host (Talos,
Flatcar and Bottlerocket have no python3); the Python one needs the host's python3 and starts
in ~11 ms (-I -S: isolated mode and no `site`; through a pyenv shim it would be ~150 ms). It
stays the default so that existing invocations keep their meaning.

The file is written to a temporary name in DIR, then renamed over `megalos`: a runtime never
executes a half-written plugin. A C shim is tried first (with no agent behind its socket it must
answer as the shim does: exit 1, CNI error JSON, code 11), so a binary built for another
machine is refused. The Python one is not: its interpreter is the host's, which may not run
where the installer runs (the DaemonSet's init container mounts only the host's python3).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cni import shim

SHIM_SOURCE = Path(__file__).with_name("shim.py")
SHIM_C_SOURCE = Path(__file__).with_name("shim.c")
DEFAULT_INTERPRETER = "/usr/bin/python3"
KINDS = ("python", "c")
C_FLAGS = ("-O2", "-static")


class InstallError(Exception):
    """The shim could not be built or does not work on this host."""


def compile_c(output: str, cc: str = "") -> None:
    """Build cni/shim.c into `output` with `cc -O2 -static` ($CC, else cc)."""
    compiler = cc or os.environ.get("CC") or "cc"
    if not shutil.which(compiler):
        raise InstallError(f"no C compiler ({compiler}) to build {SHIM_C_SOURCE}: install one, "
                           "or give a prebuilt shim with --binary")
    proc = subprocess.run([compiler, *C_FLAGS, "-o", output, str(SHIM_C_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"{compiler} {' '.join(C_FLAGS)} failed: {proc.stderr.strip()}")


def _check(path: str) -> None:
    """Run the new shim once, VERSION with no agent behind its socket: it answers it itself."""
    env = {"CNI_COMMAND": "VERSION", "MEGALOS_AGENT_SOCKET": f"{path}.no-agent.sock"}
    try:
        proc = subprocess.run([path], input=b'{"cniVersion": "1.0.0"}', env=env,
                              capture_output=True, timeout=30)
        answer = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise InstallError(f"the new shim does not run on this host: {exc}") from None
    if proc.returncode != 0 or answer != {"cniVersion": "1.0.0",
                                          "supportedVersions": list(shim.SUPPORTED_VERSIONS)}:
        raise InstallError(f"the new shim answered exit {proc.returncode}, {proc.stdout!r}")


def install(bin_dir: str, interpreter: str = DEFAULT_INTERPRETER, name: str = "megalos",
            kind: str = "python", binary: str = "", cc: str = "") -> Path:
    """Install the shim of `kind` as bin_dir/name; `binary`: a prebuilt C shim to copy."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    target = Path(bin_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    try:
        if kind == "python":
            with os.fdopen(fd, "w") as out:
                out.write(f"#!{interpreter} -IS\n")  # one argument: the kernel passes one
                out.write(SHIM_SOURCE.read_text())
        elif binary:
            with os.fdopen(fd, "wb") as out, open(binary, "rb") as src:
                shutil.copyfileobj(src, out)
        else:
            os.close(fd)
            compile_c(tmp, cc)
        os.chmod(tmp, 0o755)
        if kind == "c":
            _check(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megalos-install-shim",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("bin_dir", nargs="?", default="/opt/cni/bin")
    parser.add_argument("--kind", choices=KINDS, default="python",
                        help="the C shim or the Python one (default %(default)s)")
    parser.add_argument("--binary", default="",
                        help="--kind c: a prebuilt shim to copy instead of compiling cni/shim.c")
    parser.add_argument("--cc", default="", help="--kind c: the C compiler (default $CC, else cc)")
    parser.add_argument("--interpreter", default=DEFAULT_INTERPRETER,
                        help="--kind python: python3 on the host that runs the plugin "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    if args.kind == "python" and (args.binary or args.cc):
        parser.error("--binary and --cc go with --kind c")
    if args.kind == "python" and not (os.path.isabs(args.interpreter)
                                      and os.access(args.interpreter, os.X_OK)):
        print(f"megalos-install-shim: {args.interpreter} is not an executable absolute path",
              file=sys.stderr)
        return 1
    if args.binary and not os.access(args.binary, os.R_OK):
        print(f"megalos-install-shim: cannot read {args.binary}", file=sys.stderr)
        return 1
    try:
        print(install(args.bin_dir, args.interpreter, kind=args.kind, binary=args.binary,
                      cc=args.cc))
    except InstallError as exc:
        print(f"megalos-install-shim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
