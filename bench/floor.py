"""The floor: plain OpenSSH/rsync to every host at once, driven by the smallest possible script.

    python3 bench/floor.py HOSTS.json {sync,dry,true,script} [SRC | SCRIPT]

HOSTS.json: {"key": ..., "known_hosts": ..., "hosts": [{"name", "address", "port", "dest", "steps"}]}.
`sync` runs `rsync -a --delete SRC/ root@host:DEST/`, `dry` the same with `-n -i` (itemized:
the per-file diff), `true` runs `ssh host true`, `script` runs `ssh host sh -s STEPS < SCRIPT`
(the 20-small-steps job in one connection); all hosts in parallel (forks = hosts). Output is
prefixed with the host name; the exit code is the number of hosts that failed (capped at 100).
"""

import json
import subprocess
import sys
import threading


def main() -> int:
    spec = json.load(open(sys.argv[1]))
    mode = sys.argv[2]
    src = sys.argv[3].rstrip("/") + "/" if len(sys.argv) > 3 else ""
    script = open(sys.argv[3], "rb").read() if mode == "script" else None
    ssh = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={spec['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-i",
        spec["key"],
    ]
    failed = []
    lock = threading.Lock()

    def one(h: dict) -> None:
        stdin = None
        if mode == "true":
            argv = [*ssh, "-p", str(h["port"]), f"root@{h['address']}", "true"]
        elif mode == "script":
            argv = [*ssh, "-p", str(h["port"]), f"root@{h['address']}", "sh", "-s", h["steps"]]
            stdin = script
        else:
            rsh = " ".join([*ssh, "-p", str(h["port"])])
            flags = ["-a", "--delete"] + (["-n", "-i"] if mode == "dry" else [])
            argv = ["rsync", *flags, "-e", rsh, src, f"root@{h['address']}:{h['dest'].rstrip('/')}/"]
        if stdin is None:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        else:
            p = subprocess.run(argv, input=stdin, capture_output=True)
        with lock:
            for line in (p.stdout + p.stderr).decode(errors="replace").splitlines():
                print(f"{h['name']}: {line}")
            if p.returncode:
                failed.append(h["name"])

    threads = [threading.Thread(target=one, args=(h,)) for h in spec["hosts"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print("failed:", " ".join(sorted(failed)), file=sys.stderr)
    return min(len(failed), 100)


if __name__ == "__main__":
    sys.exit(main())
