"""An emulated cluster (network namespaces as nodes and pods) for tests, demo and benchmarks."""
