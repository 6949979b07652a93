"""`megalos-install-shim DIR`: install the `megalos` CNI binary into a CNI bin dir, atomically.

The shim is copied with a `#!<python> -IS` line (-I -S): isolated mode and no `site` keep its start
at ~10 ms (through a pyenv shim it would be ~150 ms). The write goes to a temporary file in the
same directory, then rename(2): a runtime never executes a half-written plugin.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("shim.py")
DEFAULT_INTERPRETER = "/usr/bin/python3"


def install(bin_dir: str, interpreter: str = DEFAULT_INTERPRETER, name: str = "megalos") -> Path:
    body = SHIM_SOURCE.read_text()
    text = f"#!{interpreter} -IS\n{body}"  # one argument: the kernel passes one
    target = Path(bin_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megalos-install-shim", description=__doc__.splitlines()[0])
    parser.add_argument("bin_dir", nargs="?", default="/opt/cni/bin")
    parser.add_argument("--interpreter", default=DEFAULT_INTERPRETER,
                        help="python3 on the host that runs the plugin (default %(default)s)")
    args = parser.parse_args(argv)
    if not os.path.isabs(args.interpreter) or not os.access(args.interpreter, os.X_OK):
        print(f"megalos-install-shim: {args.interpreter} is not an executable absolute path",
              file=sys.stderr)
        return 1
    print(install(args.bin_dir, args.interpreter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
