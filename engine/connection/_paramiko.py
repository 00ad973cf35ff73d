"""paramiko, imported without `invoke`.

paramiko.config imports `invoke` (which imports unittest.mock: ~30 ms of every run) only to
evaluate `Match exec` lines of ssh_config files; playbook never reads ssh_config, so where
invoke is not loaded yet, paramiko is told it is absent. Both ssh.py and keys.py import
paramiko from here, so whichever is imported first keeps the saving.
"""

import sys

if "invoke" not in sys.modules:
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko
    finally:
        del sys.modules["invoke"]
else:
    import paramiko

__all__ = ["paramiko"]
