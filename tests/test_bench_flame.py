"""bench/flame.py: py-spy's collapsed stacks read, shared out by CPU seconds, drawn as SVG."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bench.flame import (Profile, flame_svg, frame_file, frame_function, read_collapsed, stage_samples,
                         summary)

RAW = """\
main (app.py:3);parse (os_ken/lib/packet/bgp.py:10);_Value.parse_value (os_ken/lib/packet/bgp.py:99) 30
main (app.py:3);parse (os_ken/lib/packet/bgp.py:11) 10
main (app.py:3);send <&> (speaker/x.py:5) 60
garbage line
"""


def test_read_collapsed_sums_stacks_and_skips_junk():
    stacks = read_collapsed(RAW + "main (app.py:3);send <&> (speaker/x.py:5) 5\n")
    assert stacks[("main (app.py:3)", "send <&> (speaker/x.py:5)")] == 65
    assert sum(stacks.values()) == 105


def test_frame_names():
    frame = "Peer._send (os_ken/services/protocols/bgp/peer.py:12)"
    assert frame_file(frame) == "os_ken/services/protocols/bgp/peer.py"
    assert frame_function(frame) == "Peer._send (os_ken/services/protocols/bgp/peer.py)"


def test_seconds_share_out_the_measured_cpu():
    profile = Profile("p", read_collapsed(RAW), cpu_s=2.0)
    assert profile.samples == 100
    assert profile.seconds(60) == pytest.approx(1.2)
    assert Profile("p", read_collapsed(RAW)).seconds(60) == pytest.approx(0.3)  # 200 Hz


def test_summary_by_file_and_function():
    text = summary(Profile("reflector", read_collapsed(RAW), cpu_s=2.0))
    lines = text.splitlines()
    by_file = lines[lines.index("Self time by file:") + 1:]
    assert by_file[0].split() == ["1.20", "s", "60.0", "%", "speaker/x.py"]
    assert by_file[1].split() == ["0.80", "s", "40.0", "%", "os_ken/lib/packet/bgp.py"]
    inclusive = lines[lines.index("Inclusive time by function:") + 1:]
    assert inclusive[0].split()[:2] == ["2.00", "s"] and "main (app.py)" in inclusive[0]
    assert any("0.80 s" in line and "parse (os_ken/lib/packet/bgp.py)" in line for line in inclusive)


def test_flame_svg_is_xml_with_a_box_per_frame():
    svg = flame_svg(Profile("n1 <bgp>", read_collapsed(RAW), cpu_s=2.0))
    root = ET.fromstring(svg)  # escaped: '<&>' in a frame name, '<bgp>' in the label
    ns = {"s": "http://www.w3.org/2000/svg"}
    titles = [t.text for t in root.findall(".//s:title", ns)]
    assert len(titles) == 5  # main, parse, parse_value, parse (line 11), send
    assert "main (app.py:3): 2.000 s, 100.0 %" in titles
    widths = {t.text.split(":")[0]: float(g.find("s:rect", ns).get("width"))
              for g in root.findall("s:g", ns) for t in [g.find("s:title", ns)]}
    assert widths["main (app.py"] == pytest.approx(1200.0)
    assert widths["send <&> (speaker/x.py"] == pytest.approx(720.0)


def test_stages_take_the_innermost_named_function():
    stacks = read_collapsed(
        "BaseHub.run (eventlet/hubs/hub.py:1);NodeSpeaker._run (speaker/node.py:2) 3\n"
        "NodeSpeaker._run (speaker/node.py:2);NodeSpeaker.reconcile (speaker/node.py:9);x (a.py:1) 5\n"
        "main (app.py:1) 2\n")
    assert stage_samples(Profile("p", stacks)) == {"agent: BGP events -> FDB writes": 3,
                                                   "agent: reconcile (FDB dumps)": 5, "other": 2}
