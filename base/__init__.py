"""What every Megalos package stands on: the values of the domain (VNIs, MACs, addresses) and the
few process-level pieces every daemon shares. Standard library only; imports nothing of ours."""
