"""megalosctl: the Megalos API from a shell (the standard library and a few pure helpers of ours).

    megalosctl vnis                     VNIs with their VTEP and MAC counts
    megalosctl vni 70000                a VNI's VTEPs and MAC table
    megalosctl mac 02:00:00:00:00:0a    where a MAC is announced
    megalosctl nodes                    the reflector's BGP peers
    megalosctl lans --namespace LAB     a lab's LANs, their pods, and whether each converged
    megalosctl add-node 192.0.2.7 --name node-7 / remove-node 192.0.2.7   (need the token)
    megalosctl wait --mac 02:00:00:00:00:0a --vni 70000 --vteps 2 --timeout 60

Tables by default, `-o json` for scripts. The server is --server or $MEGALOS_API (default
http://127.0.0.1:8080). The token (reads need it too, unless the server opened them) is --token,
else the first line of --token-file, else $MEGALOS_API_TOKEN, else the file named by
$MEGALOS_API_TOKEN_FILE (a file keeps it out of the shell's history and the process list).

Exit codes: 0 done (or converged), 1 `wait` timed out, 2 usage, 3 the API answered with an
error, 4 the API could not be reached.

Why one module of ~480 lines: megalosctl is a flat list of subcommands, one short function each
with the table it prints, over one request helper; split by subcommand, each file would be a
few lines importing the same helpers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

from api.settings import SettingsError, read_token, read_token_file
from base.bounded_json import BadJson, loads
from base.primitives import normalize_mac

DEFAULT_SERVER = "http://127.0.0.1:8080"
EXIT_TIMEOUT, EXIT_USAGE, EXIT_API, EXIT_UNREACHABLE = 1, 2, 3, 4
LONG_POLL = 25.0  # seconds per events request while waiting (the server caps it at 30)
MAX_REPLY = 64 << 20  # bytes of an answer; a page of 10,000 MAC rows is 1.7 MiB


class ApiFailure(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}")
        self.status = status


class Unreachable(Exception):
    pass


class Api:
    def __init__(self, server: str, token: str | None = None, timeout: float = 10.0):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
                wait: float = 0.0):
        url = self.server + path
        query = {k: v for k, v in (query or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + wait) as reply:
                status, raw = reply.status, reply.read(MAX_REPLY + 1)
        except urllib.error.HTTPError as exc:
            raise ApiFailure(exc.code, _error_message(exc.read(MAX_REPLY), exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the API at {self.server}: {reason}") from None
        try:
            return loads(raw, MAX_REPLY, what="the answer") if raw else None
        except BadJson as exc:
            raise ApiFailure(status, str(exc)) from None

    def get(self, path: str, **query):
        return self.request("GET", path, query)

    def pages(self, path: str, key: str, limit: int | None = None, **query) -> tuple[dict, list]:
        """The first page's document and the rows of every page under `key` (or of the first
        `limit` rows)."""
        first = page = self.get(path, limit=limit, **query)
        rows = list(page[key])
        while page.get("next") and limit is None:
            page = self.get(path, cursor=page["next"], **query)
            rows += page[key]
        return first, rows


def segment(value) -> str:
    """A path parameter, quoted (a MAC's colons may stay)."""
    return urllib.parse.quote(str(value), safe=":")


def _error_message(raw: bytes, fallback) -> str:
    try:
        return loads(raw, MAX_REPLY)["error"]
    except (ValueError, KeyError, TypeError):
        return str(fallback)


# -- presentation (pure) ------------------------------------------------------------------------
def table(headers: list[str], rows: list[list]) -> str:
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def owner_text(namespace: str | None) -> str:
    """A VNI's owner as a cell: '-' when unclaimed, '(unnamed)' for the namespace of requests
    that name none."""
    return "-" if namespace is None else namespace or "(unnamed)"


def vnis_table(doc: dict) -> str:
    return table(["VNI", "VTEPS", "MACS", "OWNER", "ALSO CLAIMED BY"],
                 [[v["vni"], v["vteps"], v["macs"], owner_text(v.get("owner")),
                   ",".join(owner_text(n) for n in v.get("others") or [])] for v in doc["vnis"]])


def mac_rows(rows: list[dict], with_vni: bool = False) -> list[list]:
    return [([r["vni"]] if with_vni else []) + [r["mac"], r["vtep"], r.get("node"),
            ",".join(r.get("ips") or []), when(r["first_seen"]), when(r["last_changed"])]
            for r in rows]


MAC_HEADERS = ["MAC", "VTEP", "NODE", "IP", "FIRST SEEN", "LAST CHANGED"]


def vni_text(doc: dict, macs: list[dict]) -> str:
    claims = doc.get("claims") or []
    head = f"VNI {doc['vni']}: {len(doc['vteps'])} VTEPs, {doc['mac_count']} MACs"
    if claims:
        head += f", owned by {owner_text(claims[0]['namespace'])} since {when(claims[0]['since'] / 1000)}"
    out = [head]
    out += [f"also claimed by {owner_text(c['namespace'])} since {when(c['since'] / 1000)} "
            f"({', '.join(c['vteps'])}): two namespaces on one wire" for c in claims[1:]]
    by_vtep = {vtep: c["namespace"] for c in claims for vtep in c["vteps"]}
    out += ["", table(["VTEP", "NODE", "NAMESPACE"],
                      [[v["address"], v["node"], owner_text(by_vtep.get(v["address"]))]
                       for v in doc["vteps"]]), ""]
    out.append(table(MAC_HEADERS, mac_rows(macs)) if macs else "(no MACs)")
    if len(macs) < doc["mac_count"]:
        out.append(f"({len(macs)} of {doc['mac_count']} MACs shown)")
    return "\n".join(out)


def nodes_table(doc: dict) -> str:
    return table(["ADDRESS", "NAME", "STATE", "UPTIME", "RECEIVED", "SENT"],
                 [[n["address"], n.get("name"), n["state"], duration(n.get("uptime")),
                   n["received"], n["sent"]] for n in doc["nodes"]])


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def lans_text(doc: dict) -> str:
    """Two tables: the LANs (members announced / members, converged), then their members."""
    lans = doc["lans"]
    every = doc.get("namespace") is None  # all namespaces: say which
    ns = (lambda row: [row["namespace"]]) if every else (lambda row: [])
    lan_rows, member_rows = [], []
    for lan in lans:
        ready = sum(1 for m in lan["members"] if m["attached"] and m["announced"])
        lan_rows.append(ns(lan) + [lan["name"], lan["link"], lan["vni"],
                                   f"{ready}/{len(lan['members'])}", yes_no(lan["converged"])])
        for m in lan["members"]:
            member_rows.append(ns(lan) + [lan["name"], m["pod"], m["interface"], m["mac"],
                                          m["node"], ",".join(m["vteps"]),
                                          yes_no(m["announced"]) if m["attached"]
                                          else "not attached"])
    prefix = ["NAMESPACE"] if every else []
    out = [table(prefix + ["LAN", "LINK", "VNI", "MEMBERS", "CONVERGED"], lan_rows)]
    if member_rows:
        out += ["", table(prefix + ["LAN", "POD", "INTERFACE", "MAC", "NODE", "VTEPS",
                                    "ANNOUNCED"], member_rows)]
    if not lans:
        out.append("(no LANs" + ("" if every else f" in namespace {doc['namespace']}") + ")")
    out += [f"{lan['namespace']}/{lan['name']}: {why}" for lan in lans if (why := vni_problem(lan))]
    return "\n".join(out)


def vni_problem(lan: dict) -> str:
    """What is wrong with who owns a LAN's VNI ('' when nothing): another namespace owns it (this
    LAN's pods cannot attach), or several claim it (their pods share a wire)."""
    claimed = lan.get("vni_claimed_by") or []
    owner = lan.get("vni_owner")
    if owner is not None and owner != lan["namespace"]:
        return (f"VNI {lan['vni']} belongs to {owner_text(owner)}: this LAN's pods cannot attach "
                "(give it another vxlanId)")
    if len(claimed) > 1:
        return (f"VNI {lan['vni']} is also claimed by {', '.join(map(owner_text, claimed[1:]))}: "
                "two namespaces on one wire")
    return ""


def lans_notice(doc: dict) -> str | None:
    """Why the view may be empty or partial, or None."""
    if not doc["watching"]:
        return ("the reflector does not watch the Kubernetes API for LANs (run megalos-reflector "
                "with --lans-from-k8s)")
    if not doc["synced"]:
        return "the reflector has not listed NetworkAttachmentDefinitions and pods yet"
    return None


# -- wait ---------------------------------------------------------------------------------------
def missing(api: Api, macs: list[str], vni: int | None, vteps: int | None) -> list[str]:
    """What has not converged yet, in words (empty: everything has)."""
    left = []
    for mac in macs:
        try:
            api.get(f"/api/v1/macs/{segment(mac)}", vni=vni)
        except ApiFailure as exc:
            if exc.status != 404:
                raise
            left.append(f"MAC {mac}" + (f" in VNI {vni}" if vni else "") + " not announced")
    if vni is not None and vteps is not None:
        try:
            have = len(api.get(f"/api/v1/vnis/{segment(vni)}", limit=1)["vteps"])
        except ApiFailure as exc:
            if exc.status != 404:
                raise
            have = 0
        if have < vteps:
            left.append(f"VNI {vni} has {have} of {vteps} VTEPs")
    return left


def wait(api: Api, macs: list[str], vni: int | None, vteps: int | None, timeout: float,
         say=lambda text: print(text, file=sys.stderr, flush=True)) -> tuple[bool, list[str], float]:
    """Check, then long-poll the change log and check again, until converged or `timeout`.
    Unreachable API and a reflector that is down (503) are retried until the deadline."""
    started = time.monotonic()
    deadline = started + timeout
    since, last_report, left = None, None, ["nothing checked yet"]
    while True:
        try:
            if since is None:
                since = api.get("/api/v1/events", timeout=0, limit=1)["seq"]
            left = missing(api, macs, vni, vteps)
            if not left:
                return True, [], time.monotonic() - started
            report = "; ".join(left)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, left, time.monotonic() - started
            if report != last_report:
                say(f"waiting ({remaining:.0f} s left): {report}")
                last_report = report
            poll = min(LONG_POLL, remaining)
            reply = api.request("GET", "/api/v1/events",
                                {"since": since, "timeout": f"{poll:.3f}", "vni": vni}, wait=poll)
            since = reply["next"]
        except (Unreachable, ApiFailure) as exc:
            if isinstance(exc, ApiFailure) and exc.status != 503:
                raise
            left = [str(exc)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, left, time.monotonic() - started
            if str(exc) != last_report:
                say(f"waiting ({remaining:.0f} s left): {exc}")
                last_report = str(exc)
            time.sleep(min(1.0, remaining))
            since = None


# -- commands -----------------------------------------------------------------------------------
def cmd_vnis(api: Api, args) -> int:
    _, rows = api.pages("/api/v1/vnis", "vnis", args.limit, vtep=args.vtep, node=args.node)
    doc = {"vnis": rows}
    print(json.dumps(doc, indent=2) if args.output == "json" else vnis_table(doc))
    return 0


def cmd_vni(api: Api, args) -> int:
    first, macs = api.pages(f"/api/v1/vnis/{segment(args.vni)}", "macs", args.limit, vtep=args.vtep,
                            node=args.node)
    doc = {**first, "macs": macs, "next": None if args.limit is None else first.get("next")}
    print(json.dumps(doc, indent=2) if args.output == "json" else vni_text(doc, macs))
    return 0


def cmd_mac(api: Api, args) -> int:
    doc = api.get(f"/api/v1/macs/{segment(args.mac)}", vni=args.vni)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(table(["VNI", *MAC_HEADERS], mac_rows(doc["locations"], with_vni=True)))
    return 0


def cmd_nodes(api: Api, args) -> int:
    doc = api.get("/api/v1/nodes")
    print(json.dumps(doc, indent=2) if args.output == "json" else nodes_table(doc))
    return 0


def cmd_lans(api: Api, args) -> int:
    doc = api.get("/api/v1/lans", namespace=args.namespace)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
        return 0
    notice = lans_notice(doc)
    if notice:
        print(f"megalosctl: {notice}", file=sys.stderr)
    print(lans_text(doc))
    return 0


def cmd_add_node(api: Api, args) -> int:
    body = {"address": args.address, **({"name": args.name} if args.name else {})}
    doc = api.request("POST", "/api/v1/nodes", body=body)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(f"{doc['address']}: {'added' if doc['added'] else 'already a peer'}")
    return 0


def cmd_remove_node(api: Api, args) -> int:
    api.request("DELETE", f"/api/v1/nodes/{segment(args.address)}")
    print(json.dumps({"address": args.address, "removed": True}) if args.output == "json"
          else f"{args.address}: removed")
    return 0


def cmd_wait(api: Api, args) -> int:
    try:
        macs = [normalize_mac(m) for raw in args.mac for m in raw.split(",") if m]
    except ValueError as exc:
        return usage(str(exc))
    if args.vteps is not None and args.vni is None:
        return usage("--vteps needs --vni")
    if not macs and args.vteps is None:
        return usage("nothing to wait for: give --mac and/or --vni with --vteps")
    converged, left, elapsed = wait(api, macs, args.vni, args.vteps, args.timeout)
    if args.output == "json":
        print(json.dumps({"converged": converged, "elapsed": round(elapsed, 3), "missing": left}))
    if converged:
        print(f"converged in {elapsed:.1f} s", file=sys.stderr)
        return 0
    print(f"megalosctl: timed out after {args.timeout:g} s; still waiting for: {'; '.join(left)}",
          file=sys.stderr)
    return EXIT_TIMEOUT


def usage(message: str) -> int:
    print(f"megalosctl: {message}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    # Common options work before and after the command: SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS,
                        help=f"API URL (default $MEGALOS_API or {DEFAULT_SERVER})")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help="the API's bearer token (default $MEGALOS_API_TOKEN)")
    common.add_argument("--token-file", default=argparse.SUPPRESS, metavar="PATH",
                        help="a file whose first line is the token (default "
                        "$MEGALOS_API_TOKEN_FILE)")
    common.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="table (default) or json")
    parser = argparse.ArgumentParser(prog="megalosctl", parents=[common],
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(func=func)
        return sub

    def filters(sub):
        group = sub.add_mutually_exclusive_group()
        group.add_argument("--vtep", help="only this VTEP (address)")
        group.add_argument("--node", help="only this node (name)")
        sub.add_argument("--limit", type=int, help="only the first N rows (default: all pages)")

    filters(command("vnis", cmd_vnis, "VNIs with their VTEP and MAC counts"))
    sub = command("vni", cmd_vni, "a VNI's VTEPs and MAC table")
    sub.add_argument("vni", type=int)
    filters(sub)
    sub = command("mac", cmd_mac, "where a MAC is announced")
    sub.add_argument("mac")
    sub.add_argument("--vni", type=int, help="only in this VNI")
    command("nodes", cmd_nodes, "the reflector's BGP peers")
    sub = command("lans", cmd_lans, "LANs (NetworkAttachmentDefinitions) with their pods, and "
                  "whether each converged")
    sub.add_argument("--namespace", "-n", help="only this namespace (a Kathara lab's: its hash)")
    sub = command("add-node", cmd_add_node, "make an address a peer of the reflector")
    sub.add_argument("address")
    sub.add_argument("--name", help="the node's name, shown next to its address")
    sub = command("remove-node", cmd_remove_node, "remove a peer (its routes are withdrawn)")
    sub.add_argument("address")
    sub = command("wait", cmd_wait, "wait until MACs are announced and/or a VNI has N VTEPs")
    sub.add_argument("--mac", action="append", default=[], metavar="MAC",
                     help="a MAC that must be announced (repeat, or comma-separated)")
    sub.add_argument("--vni", type=int, help="the VNI (with --vteps; also scopes --mac)")
    sub.add_argument("--vteps", type=int, metavar="N", help="wait until the VNI has at least N VTEPs")
    sub.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)s)")
    return parser


def token_of(args, environ) -> str | None:
    """--token, --token-file, $MEGALOS_API_TOKEN, $MEGALOS_API_TOKEN_FILE: the first given."""
    if getattr(args, "token", None):
        return args.token
    if getattr(args, "token_file", None):
        return read_token_file(args.token_file, "--token-file")
    return read_token(environ)


NO_TOKEN_HINT = ("give the API token with --token-file PATH, $MEGALOS_API_TOKEN_FILE, "
                 "$MEGALOS_API_TOKEN or --token")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = getattr(args, "server", None) or os.environ.get("MEGALOS_API") or DEFAULT_SERVER
    try:
        token = token_of(args, os.environ)
    except SettingsError as exc:
        return usage(str(exc))
    args.output = getattr(args, "output", None) or "table"
    api = Api(server, token)
    try:
        return args.func(api, args)
    except ApiFailure as exc:
        print(f"megalosctl: {exc}", file=sys.stderr)
        if exc.status == 401 and not token:
            print(f"megalosctl: {NO_TOKEN_HINT}", file=sys.stderr)
        return EXIT_API
    except Unreachable as exc:
        print(f"megalosctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:  # `megalosctl vni 70000 | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
