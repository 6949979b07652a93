"""Secrets the daemons read from files (a mounted Kubernetes Secret), never from their command
line (which every user of the node can read in /proc) and never into their logs."""
from __future__ import annotations

import argparse
from pathlib import Path

MAX_MD5_PASSWORD = 80  # octets: the kernel's TCP_MD5SIG_MAXKEYLEN


def read_md5_password(path: str) -> str:
    """The TCP MD5 password in `path`, without one trailing newline (`kubectl create secret
    --from-file` keeps the file's). A missing file is no password ("": the manifests mount an
    optional Secret, and a cluster without it runs without MD5); ValueError, naming the file
    but not its content, when it is empty, unreadable, not UTF-8 or longer than 80 octets."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ValueError(f"cannot read the TCP MD5 password file {path}: {exc.strerror}") from None
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ValueError(f"the TCP MD5 password file {path} is empty")
    if len(raw) > MAX_MD5_PASSWORD:
        raise ValueError(f"the TCP MD5 password in {path} is longer than {MAX_MD5_PASSWORD} octets")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"the TCP MD5 password in {path} is not UTF-8 text") from None


def add_md5_password_option(parser: argparse.ArgumentParser) -> None:
    """--md5-password-file PATH, read once when the daemon starts, into `args.md5_password`."""
    def read(path: str) -> str:
        if not path:  # the default: no file
            return ""
        try:
            return read_md5_password(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    def refuse(_: str) -> str:  # also keeps argparse from taking it for --md5-password-file
        raise argparse.ArgumentTypeError("a password on the command line is readable by every "
                                         "user of the node: put it in a file, give "
                                         "--md5-password-file")
    parser.add_argument("--md5-password", dest="md5_password_on_command_line", type=refuse,
                        help=argparse.SUPPRESS)
    parser.add_argument("--md5-password-file", dest="md5_password", type=read, default="",
                        metavar="PATH", help="a file holding the TCP MD5 password of the BGP "
                        "sessions (a mounted Secret; read at start; a missing file: no MD5). "
                        "Every node and reflector needs the same one")
