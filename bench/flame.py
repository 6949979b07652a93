"""py-spy profiles as flame graphs (SVG) and as text: where each CPU second of a process went.

`py-spy record -f raw` writes collapsed stacks, one line per distinct stack, root first:
`outer (file.py:12);inner (file.py:40) 17` (17 samples). Samples count only a thread that was
not idle, but a runnable thread waiting for a core counts too: on a loaded machine the sample
count overstates the CPU a process got. So the text summary shares out the CPU seconds the
kernel accounted to the process over the same window (`/proc/<pid>/stat`) by the share of
samples of each file and function.
"""
from __future__ import annotations

import hashlib
import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Stack = tuple[str, ...]


def read_collapsed(text: str) -> Counter:
    """{stack (root first): samples} from py-spy's raw output."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        frames, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit() or not frames:
            continue
        stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def frame_file(frame: str) -> str:
    """'Peer._send (os_ken/services/protocols/bgp/peer.py:12)' -> 'os_ken/services/protocols/bgp/peer.py'."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    return inside.rpartition(":")[0] or inside


def frame_function(frame: str) -> str:
    """The frame without its line number: 'Peer._send (os_ken/.../peer.py)'."""
    name, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rstrip(')').rpartition(':')[0] or where.rstrip(')')})"


@dataclass
class Profile:
    """One process's samples and the CPU seconds the kernel counted over the same window."""

    label: str
    stacks: Counter
    cpu_s: float | None = None
    rate: int = 200
    samples: int = field(init=False)

    def __post_init__(self):
        self.samples = sum(self.stacks.values())

    def seconds(self, samples: int) -> float:
        """CPU seconds that `samples` stand for (by share of the measured CPU when known)."""
        if not self.samples:
            return 0.0
        if self.cpu_s is None:
            return samples / self.rate
        return self.cpu_s * samples / self.samples

    def self_by(self, key) -> Counter:
        """Samples whose innermost frame maps to each key(frame)."""
        found: Counter = Counter()
        for stack, n in self.stacks.items():
            found[key(stack[-1])] += n
        return found

    def inclusive_functions(self) -> Counter:
        """Samples with each function anywhere on the stack (counted once per stack)."""
        found: Counter = Counter()
        for stack, n in self.stacks.items():
            for name in {frame_function(f) for f in stack}:
                found[name] += n
        return found


# The stages of our processes, each named by the function (qualified name, as py-spy writes it)
# whose frame marks a sample as spent there; the innermost one on the stack wins.
STAGES = {
    "BgpProtocol._recv_loop": "BGP: receive (parse, learn)",
    "_recv_loop_whole_reads": "BGP: receive (parse, learn)",
    "BgpProcessor._run": "BGP: best-path runs",
    "Peer._run": "BGP: send (build UPDATEs)",
    "BgpService.handle": "BGP: agent commands (originate)",
    "LineWriter._run": "BGP: events to the agent",
    "BaseHub.run": "BGP: eventlet hub",
    "NodeSpeaker.reconcile": "agent: reconcile (FDB dumps)",
    "NodeSpeaker._run": "agent: BGP events -> FDB writes",
    "MacWatch._run": "agent: MAC watch",
    "BgpProcess._read": "agent: BGP events read",
}


def stage_samples(profile: Profile) -> Counter:
    """Samples per stage (see STAGES); 'other' for the rest."""
    found: Counter = Counter()
    for stack, n in profile.stacks.items():
        names = [frame.rpartition(" (")[0] for frame in stack]
        inner = [STAGES[name] for name in reversed(names) if name in STAGES]
        # innermost listed stage: reconcile runs inside the worker loop, the hub under everything
        found[inner[0] if inner else "other"] += n
    return found


def summary(profile: Profile, top: int = 15) -> str:
    """Text: CPU seconds by stage, by file (self time), by function (self), and by function
    (inclusive)."""
    total = profile.seconds(profile.samples)
    cpu = (f"{profile.cpu_s:.2f} s of CPU (kernel's count) over {profile.samples} samples"
           if profile.cpu_s is not None else f"{total:.2f} s ({profile.samples} samples at {profile.rate} Hz)")
    lines = [f"## {profile.label}: {cpu}", ""]

    def table(title: str, counts: Counter) -> None:
        lines.append(f"{title}:")
        for name, n in counts.most_common(top):
            lines.append(f"  {profile.seconds(n):7.2f} s {100 * n / max(profile.samples, 1):5.1f} %  {name}")
        lines.append("")

    table("By stage", stage_samples(profile))
    table("Self time by file", profile.self_by(frame_file))
    table("Self time by function", profile.self_by(frame_function))
    table("Inclusive time by function", profile.inclusive_functions())
    return "\n".join(lines)


# -- the SVG --------------------------------------------------------------------------------------

WIDTH, ROW, FONT, CHAR = 1200, 16, 11, 6.4


def _colour(frame: str) -> str:
    """Warm for os-ken, blue for ours, grey for eventlet, green for the rest (stdlib)."""
    path = frame_file(frame)
    shade = hashlib.blake2s(frame_function(frame).encode(), digest_size=1).digest()[0] % 40
    if path.startswith("os_ken/"):
        return f"rgb({215 + shade // 2},{110 + shade * 2},{40 + shade})"
    if path.startswith(("speaker/", "reflector/", "cni/", "bgp/")):
        return f"rgb({70 + shade},{130 + shade},{210})"
    if path.startswith("eventlet/"):
        return f"rgb({160 + shade},{160 + shade},{160 + shade})"
    return f"rgb({90 + shade},{170 + shade},{90 + shade})"


def _tree(stacks: Counter) -> dict:
    """{frame: [samples, children]} from root frames down."""
    root: dict = {}
    for stack, n in stacks.items():
        level = root
        for frame in stack:
            node = level.setdefault(frame, [0, {}])
            node[0] += n
            level = node[1]
    return root


def _depth(level: dict) -> int:
    return 1 + max((_depth(children) for _, children in level.values()), default=0) if level else 0


def flame_svg(profile: Profile, min_width: float = 0.3) -> str:
    """A flame graph (root at the bottom); each frame's tooltip gives its CPU seconds."""
    tree = _tree(profile.stacks)
    total = max(profile.samples, 1)
    height = (_depth(tree) + 2) * ROW
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="monospace" font-size="{FONT}">',
           f'<text x="4" y="{ROW - 4}">{html.escape(profile.label)}: '
           f'{profile.seconds(profile.samples):.2f} s CPU, {profile.samples} samples '
           f'(hover a frame for its share)</text>']

    def draw(level: dict, x: float, depth: int) -> None:
        for frame, (n, children) in sorted(level.items()):
            width = WIDTH * n / total
            if width >= min_width:
                y = height - (depth + 1) * ROW
                label = html.escape(frame)
                out.append(f'<g><title>{label}: {profile.seconds(n):.3f} s, {100 * n / total:.1f} %'
                           f'</title><rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{ROW - 1}" '
                           f'fill="{_colour(frame)}"/>')
                chars = int((width - 4) / CHAR)
                if chars >= 3:
                    text = frame if len(frame) <= chars else frame[:chars - 2] + ".."
                    out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{html.escape(text)}</text>')
                out.append("</g>")
                draw(children, x, depth + 1)
            x += width
    draw(tree, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_reports(raw: Path, label: str, cpu_s: float | None, rate: int) -> Profile:
    """`<raw>.svg` and `<raw>.summary.txt` beside py-spy's raw output."""
    profile = Profile(label, read_collapsed(raw.read_text()), cpu_s, rate)
    raw.with_suffix(".svg").write_text(flame_svg(profile))
    raw.with_suffix(".summary.txt").write_text(summary(profile) + "\n")
    return profile

