"""The BGP EVPN control plane both the node agent and the reflector run.

- bgp.protocol: the typed commands, replies and events between an agent and its BGP process
  (standard library only; both sides import it);
- bgp.client: the agent's side, BgpProcess (threads; never imports os-ken or eventlet);
- bgp.process: the BGP process itself (`python -m bgp.process`: eventlet, os-ken);
- bgp.service: the commands applied to os-ken's BGPSpeaker; bgp.events: os-ken's paths as events;
- bgp.osken_compat and bgp.osken_throughput: every fix we apply to os-ken (behaviour, then per-route
  cost), each with a test that fails when upstream changes; bgp.osken_patch records what they replace.
"""
