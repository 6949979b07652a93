"""The LAN map at 300 devices and 600 interfaces, in a real browser (headless Chromium).

    python -m bench.map                      # --devices 300 --nodes 3 --rounds 10

A lab of that size runs on the namespace cluster as `make demo` runs its own (lab.labrun: an
emulated Kubernetes API server, the reflector watching it, one agent per node, Kathara's pods
attached through the Multus harness with the installed `megalos` plugin): every device has two
interfaces; half the LANs are point-to-point links, half have four members. Measured:

- the first render: the page loaded, GET /api/v1/map fetched, laid out and drawn (the page's
  own timings, window.megalosMap.stats), and the whole from navigation to the drawing;
- GET /api/v1/map itself (size, and time over 20 requests, from this process);
- per round, a device added: its pod created (the page shows it, not attached yet: `shown`, from
  the creation), attached by Multus (two CNI ADDs, its network status published: `attach`), then
  converged on the page (`converged`, from the publication); then the device deleted (its CNI
  DELs, the pod object gone), to the page dropping it (`gone`, from the deletion's end); times
  are the page's own clock at the end of the render that showed the change; and each render's
  layout and drawing time at the lab's size.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.evpn import git_head, loadavg, machine, print_table, summary
from lab.api_server import ApiServer
from lab.browser import MapPage, launch
from lab.labrun import RunningLab

RESULTS = Path(__file__).resolve().parent / "results"


def lab_layout(devices: int, seed: int = 13) -> dict[str, list[str]]:
    """device -> the LANs of its two interfaces: 2 * devices interfaces on LANs of 2 and 4
    members alternately (no device twice on one LAN)."""
    rng = random.Random(seed)
    names = [f"d{i}" for i in range(devices)]
    slots = [name for name in names for _ in range(2)]
    rng.shuffle(slots)
    lans: list[list[str]] = []
    size = 4
    while slots:
        members: list[str] = []
        for name in list(slots):
            if name not in members:
                members.append(name)
                slots.remove(name)
            if len(members) == size:
                break
        lans.append(members)
        size = 6 - size
    layout: dict[str, list[str]] = {name: [] for name in names}
    for index, members in enumerate(lans):
        for name in members:
            layout[name].append(f"L{index}")
    return layout


def lab_conf(layout: dict[str, list[str]]) -> str:
    return "".join(f'{device}[{i}]="{lan}"\n' for device, lans in layout.items()
                   for i, lan in enumerate(lans))


STATS = "() => window.megalosMap.stats"
SHOWN = """([label, state]) => { const el = [...document.querySelectorAll('#map .device')]
  .find((d) => d.querySelector('text').textContent === label);
  return state === null ? !el : Boolean(el && (!state || el.classList.contains(state))); }"""


def api_timing(api: ApiServer, count: int = 20) -> dict:
    times, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(api.request("/api/v1/map"), timeout=30) as reply:
            size = len(reply.read())
        times.append(time.perf_counter() - started)
    return {"bytes": size, **summary(times)}


def until(tab: MapPage, label: str, state: str | None, timeout: float = 60) -> dict:
    """Wait until the page shows `label` (in `state`; None: gone); the page's stats then."""
    tab.wait_for(SHOWN, [label, state], int(timeout * 1000))
    return tab.page.evaluate(STATS)


def run(args) -> dict:
    layout = lab_layout(args.devices)
    spares = {f"x{i}": layout[f"d{i}"] for i in range(args.rounds)}  # same LANs as d0, d1...
    started = time.monotonic()
    with RunningLab(lab_conf({**layout, **spares}), nodes=args.nodes) as lab:
        nodes = [n.name for n in lab.nodes]
        per_node = {node: [d for i, d in enumerate(layout) if i % len(nodes) == nodes.index(node)]
                    for node in nodes}
        with ThreadPoolExecutor(len(nodes)) as pool:  # one Multus per node, as on a cluster
            list(pool.map(lambda node: [lab.attach(d, node) for d in per_node[node]], nodes))
        attached_s = time.monotonic() - started
        print(f"{args.devices} devices attached on {args.nodes} nodes in {attached_s:.0f} s",
              flush=True)
        ns = lab.kathara.namespace
        deadline = time.monotonic() + args.converge_timeout
        while True:
            with urllib.request.urlopen(lab.api.request(f"/api/v1/map?namespace={ns}")) as reply:
                doc = json.loads(reply.read())
            done = doc["synced"] and doc["summary"]["converged"] == len(doc["lans"])
            if done or time.monotonic() > deadline:
                break
            time.sleep(1)
        converge_s = time.monotonic() - started - attached_s
        waiting = Counter(p.split(": ", 1)[-1].split(" ")[0] + " " + p.split(": ", 1)[-1].split(" ")[-1]
                          for lan in doc["lans"] for p in lan["problems"])
        print(f"after {converge_s:.0f} s more: {doc['summary']}; still awaited: "
              f"{dict(waiting.most_common(4))}", flush=True)
        figures = {"summary": doc["summary"], "attach_s": round(attached_s, 1),
                   "converge_s": round(converge_s, 1), "awaited": dict(waiting),
                   "api_map": api_timing(lab.api)}
        from playwright.sync_api import sync_playwright
        with sync_playwright() as playwright:
            browser = launch(playwright)
            first = []
            for _ in range(args.loads):
                tab = MapPage(browser, lab.api.page_url(f"ns={ns}"))
                tab.rendered()
                stats = tab.page.evaluate(STATS)
                navigation = tab.page.evaluate("""() => {
                  const n = performance.getEntriesByType("navigation")[0];
                  return {loadedMs: n.domContentLoadedEventEnd,
                          toDrawnMs: window.megalosMap.stats.appliedAt - performance.timeOrigin}; }""")
                first.append({**{k: stats[k] for k in ("fetchMs", "layoutMs", "renderMs",
                                                       "applyMs")}, **navigation})
                if len(first) < args.loads:
                    tab.close()
            if args.screenshot:
                tab.page.screenshot(path=args.screenshot)
            rounds = []
            for i, (device, lans) in enumerate(spares.items()):
                before = tab.page.evaluate(STATS)["renders"]
                created = time.time() * 1000  # lab.attach creates the pod first
                lab.attach(device, nodes[i % len(nodes)])
                published = time.time() * 1000  # its network status is in the API server
                shown = until(tab, device, "")
                try:
                    converged = until(tab, device, "s-converged", timeout=60)
                except TimeoutError:
                    converged = None
                lab.detach(device)
                removed_at = time.time() * 1000
                gone = until(tab, device, None)
                rounds.append({"shown_ms": shown["appliedAt"] - created,
                               "attach_ms": published - created,
                               "converged_ms": converged and converged["appliedAt"] - published,
                               "gone_ms": gone["appliedAt"] - removed_at,
                               "renders": gone["renders"] - before,
                               "layout_ms": gone["layoutMs"], "render_ms": gone["renderMs"],
                               "apply_ms": gone["applyMs"], "fetch_ms": gone["fetchMs"]})
                print(f"round {i + 1}: shown {rounds[-1]['shown_ms']:.0f} ms, converged "
                      f"{rounds[-1]['converged_ms']} ms, gone {rounds[-1]['gone_ms']:.0f} ms "
                      f"after the change; render {gone['applyMs']:.0f} ms", flush=True)
            browser.close()
        figures["first_render"] = first
        figures["rounds"] = rounds
        return figures


def medians(rows: list[dict], key: str) -> dict:
    return summary([row[key] / 1000 for row in rows if row[key] is not None])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.map", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=300, help="devices, two interfaces each")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10, help="devices added and deleted live")
    p.add_argument("--loads", type=int, default=3, help="first renders (fresh tabs)")
    p.add_argument("--screenshot", default="", help="save the full map as this PNG")
    p.add_argument("--converge-timeout", type=float, default=300.0,
                   help="seconds to wait for every LAN to converge before measuring (then the "
                   "measurement goes on with what has)")
    p.add_argument("--out", default="", help="results file (default bench/results/map-<time>.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.map needs root (network namespaces)", file=sys.stderr)
        return 2
    info = {**machine(), "git": git_head(), "args": vars(args)}
    figures = run(args)
    info["loadavg_at_end"] = loadavg()
    result = {"machine": info, **figures}
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out or RESULTS / f"map-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=1))
    first, rounds = figures["first_render"], figures["rounds"]
    print_table("first render (ms; fresh tab each)", [
        tuple(round(f[k]) for k in ("loadedMs", "fetchMs", "layoutMs", "renderMs", "applyMs",
                                    "toDrawnMs"))
        for f in first], ("page loaded", "fetch", "layout", "draw", "apply", "navigation->drawn"))
    rows = [(key, *(medians(rounds, key)[q] for q in ("p50_ms", "p90_ms", "max_ms")))
            for key in ("shown_ms", "attach_ms", "converged_ms", "gone_ms", "apply_ms", "layout_ms",
                        "render_ms")]
    print_table("live updates (ms)", rows, ("what", "p50", "p90", "max"))
    print(f"\nGET /api/v1/map: {figures['api_map']}")
    print(f"summary: {figures['summary']}; load average {info['loadavg_at_start']} -> "
          f"{info['loadavg_at_end']}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
