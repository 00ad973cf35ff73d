"""Connectors: one interface (`Connection`), three implementations (ssh, local, fake)."""

from engine.connection.base import CommandResult, Connection, ReadOnly

__all__ = ["CommandResult", "Connection", "ReadOnly"]
