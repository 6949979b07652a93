"""The daemons' TCP MD5 password and route limit options: the password only from a file, never
on a command line or in a repr; the file's mistakes named clearly, its content never. The
password on real sessions: test_tenant_bgp.py."""
from __future__ import annotations

import pytest

from base.secrets import read_md5_password
from bgp.peer_rules import DEFAULT_PER_CLIENT, DEFAULT_PER_REFLECTOR
from bgp.protocol import PeerAdd, ProtocolError, decode_command, encode_commands
from reflector import main as reflector_main
from speaker import agent
from speaker.config import NodeConfig

PASSWORD = "s3cret-megalos"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "md5-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.mark.parametrize("parser", [reflector_main.build_parser, agent.build_parser])
def test_the_password_comes_from_a_file_only(parser, secret, tmp_path, capsys):
    args = parser().parse_args(["--md5-password-file", str(secret)])
    assert args.md5_password == PASSWORD                       # one trailing newline dropped
    assert parser().parse_args([]).md5_password == ""
    assert parser().parse_args(["--md5-password-file", str(tmp_path / "absent")]).md5_password == ""
    with pytest.raises(SystemExit):
        parser().parse_args(["--md5-password", PASSWORD])      # never on a command line
    for content, why in ((b"", "is empty"), (b"\n", "is empty"), (b"x" * 81, "longer than 80 octets"),
                         (b"\xff\xfe", "not UTF-8")):
        bad = tmp_path / "bad"
        bad.write_bytes(content)
        with pytest.raises(SystemExit):
            parser().parse_args(["--md5-password-file", str(bad)])
        err = capsys.readouterr().err
        assert why in err and str(bad) in err


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"cannot read the TCP MD5 password file {tmp_path}"):
        read_md5_password(str(tmp_path))  # a directory


def test_the_password_reaches_the_bgp_process_and_no_repr(secret):
    config = reflector_main.reflector_config(reflector_main.build_parser().parse_args(
        ["--router-id", "192.0.2.1", "--md5-password-file", str(secret)]))
    assert config.md5_password == PASSWORD and PASSWORD not in repr(config)
    node = NodeConfig.from_args(agent.build_parser().parse_args(["--md5-password-file", str(secret)]))
    assert node.md5_password == PASSWORD and PASSWORD not in repr(node)
    peer = PeerAdd("192.0.2.2", "passive", PASSWORD)
    assert PASSWORD not in repr(peer)
    assert decode_command(encode_commands([(1, peer)]))[1] == peer
    with pytest.raises(ProtocolError, match="at most 80 octets"):
        decode_command(encode_commands([(1, PeerAdd("192.0.2.2", password="é" * 41))]))


def test_route_limits_default_to_a_node_and_to_a_cluster():
    reflector = reflector_main.reflector_config(reflector_main.build_parser().parse_args(
        ["--router-id", "192.0.2.1"]))
    assert reflector.start_command().max_routes_per_peer == DEFAULT_PER_CLIENT == 8192
    node = NodeConfig.from_args(agent.build_parser().parse_args([]))
    assert node.max_routes_per_peer == DEFAULT_PER_REFLECTOR == 65536
    assert NodeConfig.from_args(agent.build_parser().parse_args(
        ["--max-routes-per-peer", "0"])).max_routes_per_peer == 0   # no limit
    with pytest.raises(ValueError):
        NodeConfig.from_args(agent.build_parser().parse_args(["--max-routes-per-peer", "-1"]))
    args = reflector_main.build_parser().parse_args(["--router-id", "192.0.2.1",
                                                     "--max-routes-per-peer", "-1"])
    with pytest.raises(ValueError, match="--max-routes-per-peer"):
        reflector_main.check_args(args)
