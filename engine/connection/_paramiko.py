"""paramiko, imported without `invoke`.

paramiko.config imports `invoke` (which imports unittest.mock: ~30 ms of every run) only to
evaluate `Match exec` lines of ssh_config files; playbook never reads ssh_config, so where
invoke is not loaded yet, paramiko is told it is absent. Both ssh.py and keys.py import
paramiko from here, so whichever is imported first keeps the saving.

Every packet paramiko reads has its MAC checked by `paramiko.util.constant_time_bytes_eq`, a
Python loop over the 32 bytes (two calls per byte): 24 ms of CPU for the ~6,800 packets of a
25-host run of 20 small steps (0.6 ms in C). The standard library's `hmac.compare_digest` is the same comparison
(constant time, False for different lengths) in C; paramiko's packetizer looks the function up
on `paramiko.util` at each packet, so replacing it there is enough.

paramiko's transport thread logs a failed handshake (a port that is not SSH, say) at ERROR with
its traceback; every failure it logs also reaches us as an exception, which becomes one line of
the host's result. With no handler configured anywhere, Python's last-resort handler printed
those records on stderr, so `paramiko` gets a `NullHandler`, as the logging HOWTO asks of
libraries: a program that configures logging still receives them.
"""

import hmac
import logging
import sys

if "invoke" not in sys.modules:
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko
    finally:
        del sys.modules["invoke"]
else:
    import paramiko

paramiko.util.constant_time_bytes_eq = hmac.compare_digest  # type: ignore[assignment]
logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = ["paramiko"]
