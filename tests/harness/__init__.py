"""Real services for integration tests and benchmarks (started and stopped by the suite)."""

from tests.harness.sshd import FleetHost, SshdFleet

__all__ = ["FleetHost", "SshdFleet"]
