"""How each compared tool is configured and invoked for each benchmark job.

Every runner turns (job, source tree) into one argv + environment; the bench times that whole
process. Configs (inventories, playbooks, deploy files) are generated from the sshd fleet.

Jobs: `full`, `nochange`, `change` (apply a sync), `dryrun` (a dry run with a per-file diff),
`fanout` (`true` on every host), `steps` and `steps-nochange` (20 small steps per host, from an
empty steps dir and again with nothing to do; bench/steps.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import steps as stepjob
import yaml
from peers import Peers, playbook_command

__all__ = ["Target", "FleetView", "Runner", "RUNNERS", "make_runners", "SYNC_JOBS", "STEP_JOBS"]

BENCH = Path(__file__).resolve().parent
SYNC_JOBS = ("full", "nochange", "change", "dryrun")
STEP_JOBS = ("steps", "steps-nochange")


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    port: int
    data_dir: Path

    @property
    def dest(self) -> Path:
        return self.data_dir / "site"

    @property
    def steps(self) -> Path:
        """Where the 20-small-steps job writes (bench/steps.py)."""
        return self.data_dir / "steps"


@dataclass(frozen=True)
class FleetView:
    """What the runners need to know about the fleet."""

    hosts: list[Target]
    key: Path
    known_hosts: Path
    workdir: Path  # per-N scratch dir for generated configs


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    ok_rc: tuple[int, ...] = (0,)
    cwd: Path | None = None


class Runner:
    """One tool. `unavailable` is a reason it cannot run (shown instead of numbers)."""

    name = "?"
    unavailable: str | None = None
    note: str = ""

    def __init__(self, fleet: FleetView) -> None:
        self.fleet = fleet
        self.dir = fleet.workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    def invocation(self, job: str, src: Path, run_dir: Path) -> Invocation:
        raise NotImplementedError

    def unavailable_for(self, job: str) -> str | None:
        return self.unavailable

    @staticmethod
    def base_env() -> dict[str, str]:
        env = dict(os.environ)
        for k in ("PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(k, None)
        env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
        env["NO_COLOR"] = "1"
        return env


# -- the floor -----------------------------------------------------------------------------


class RsyncFloor(Runner):
    """Plain parallel `rsync -a --delete` / `ssh host true` (bench/floor.py)."""

    name = "rsync"

    def __init__(self, fleet: FleetView) -> None:
        super().__init__(fleet)
        self.spec = self.dir / "hosts.json"
        self.spec.write_text(
            json.dumps(
                {
                    "key": str(fleet.key),
                    "known_hosts": str(fleet.known_hosts),
                    "hosts": [
                        {
                            "name": h.name,
                            "address": h.address,
                            "port": h.port,
                            "dest": str(h.dest),
                            "steps": str(h.steps),
                        }
                        for h in fleet.hosts
                    ],
                },
                indent=1,
            )
        )
        self.script = self.dir / "steps.sh"
        self.script.write_text(stepjob.floor_script())

    def invocation(self, job: str, src: Path, run_dir: Path) -> Invocation:
        mode = {"fanout": "true", "dryrun": "dry", "steps": "script", "steps-nochange": "script"}.get(job, "sync")
        argv = [sys.executable, "-S", str(BENCH / "floor.py"), str(self.spec), mode]
        if mode == "script":
            argv.append(str(self.script))
        elif job != "fanout":
            argv.append(str(src))
        return Invocation(argv, self.base_env())


# -- playbook ------------------------------------------------------------------------------


def _playbook_has_rsync() -> bool:
    argv = playbook_command()
    py = argv[0]
    import subprocess

    probe = "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('modules.rsync') else 1)"
    return subprocess.run([py, "-c", probe], cwd="/", capture_output=True).returncode == 0


class Playbook(Runner):
    name = "playbook"

    def __init__(self, fleet: FleetView, inventory_writer) -> None:
        super().__init__(fleet)
        self.inventory = inventory_writer(self.dir / "inventory.yml")
        self.has_rsync = _playbook_has_rsync()
        self.state_dir = self.dir / "state"
        # All N "hosts" share this machine's /tmp, so a fleet's deploy lock
        # (/tmp/playbook-locks/<fleet>.lock on every host) would be ONE directory that the N hosts
        # race for. Where the loader accepts `lock: false` the bench turns the lock off (the other
        # tools take no lock either); otherwise each host gets its own one-host fleet (and step),
        # so each host has its own lock path.
        self.lock_off = self._accepts_lock_false()
        self.note = (
            "`lock: false` on the fleet (all hosts share one /tmp)"
            if self.lock_off
            else "one single-host fleet + step per host, so each host has its own deploy lock path "
            "(all hosts share one /tmp and the engine cannot turn locks off yet)"
        )

    def _accepts_lock_false(self) -> bool:
        import subprocess

        probe = self.dir / "probe-lock.yml"
        probe.write_text(
            yaml.safe_dump(
                {
                    "name": "probe",
                    "fleets": {"web": {"hosts": "web", "lock": False}},
                    "steps": [{"id": "t", "module": "command", "fleet": "web", "args": {"argv": ["true"]}}],
                }
            )
        )
        p = subprocess.run(
            [*playbook_command(), "validate", str(probe), "-i", str(self.inventory)], capture_output=True, cwd=self.dir
        )
        return p.returncode == 0

    def _fleets_and_steps(self, step: dict | list[dict]) -> tuple[dict, list[dict]]:
        chain = step if isinstance(step, list) else [step]
        if self.lock_off:
            return {"web": {"hosts": "web", "lock": False}}, [{**s, "fleet": "web"} for s in chain]
        fleets = {f"web_{h.name}": {"hosts": h.name} for h in self.fleet.hosts}
        steps = []
        for h in self.fleet.hosts:
            for s in chain:
                one = {**copy.deepcopy(s), "id": f"{s['id']}_{h.name}", "fleet": f"web_{h.name}"}
                if "needs" in s:
                    one["needs"] = [f"{d}_{h.name}" for d in s["needs"]]
                steps.append(one)
        return fleets, steps

    @staticmethod
    def _step_chain() -> list[dict]:
        """bench/steps.py as playbook steps: `command` with an `unless` content check (files) or
        `creates` (commands), each step needing the one before it, as the peers run them in order."""
        out: list[dict] = []
        d = "{{ root }}/steps"
        for s in stepjob.STEPS:
            if isinstance(s, stepjob.FileStep):
                digest = hashlib.sha1(s.content.encode()).hexdigest()
                args = {
                    "shell": f"cat > {s.path}.tmp && mv {s.path}.tmp {s.path}",
                    "stdin": s.content,
                    "chdir": d,
                    # the file already holds exactly this content: nothing to do
                    "unless": f"echo '{digest}  {s.path}' | sha1sum -c --status",
                }
            else:
                args = {"shell": s.shell, "chdir": d, "creates": f"{d}/{s.creates}"}
            step = {"id": s.id, "module": "command", "args": args}
            if out:
                step["needs"] = [out[-1]["id"]]
            out.append(step)
        return out

    def unavailable_for(self, job: str) -> str | None:
        if job in SYNC_JOBS and not self.has_rsync:
            return "n/a (module missing)"
        return None

    def _playbook(self, job: str, src: Path) -> Path:
        if job == "fanout":
            fleets, steps = self._fleets_and_steps({"id": "true", "module": "command", "args": {"argv": ["true"]}})
            doc = {"name": "bench-fanout", "fleets": fleets, "steps": steps}
            path = self.dir / "fanout.yml"
        elif job in STEP_JOBS:
            fleets, steps = self._fleets_and_steps(self._step_chain())
            doc = {"name": "bench-steps", "fleets": fleets, "steps": steps}
            path = self.dir / "steps.yml"
        else:
            fleets, steps = self._fleets_and_steps(
                {
                    "id": "sync",
                    "module": "rsync",
                    "args": {
                        "src": "{{ sources.tree.path }}",
                        "dest": "{{ root }}/site",
                        "delete": True,
                        "releases": False,
                    },
                }
            )
            doc = {
                "name": "bench-sync",
                "sources": {"tree": {"type": "local", "path": str(src)}},
                "fleets": fleets,
                "steps": steps,
            }
            path = self.dir / f"sync-{src.name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def invocation(self, job: str, src: Path, run_dir: Path) -> Invocation:
        n = str(len(self.fleet.hosts))
        verb = "plan" if job == "dryrun" else "run"
        argv = [
            *playbook_command(),
            verb,
            str(self._playbook(job, src)),
            "-i",
            str(self.inventory),
            "--forks",
            n,
            "--state-dir",
            str(self.state_dir),
        ]
        # plan exits 2 when it finds changes (which the dry-run job always has)
        return Invocation(argv, self.base_env(), ok_rc=(0, 2) if job == "dryrun" else (0,))


# -- ansible -------------------------------------------------------------------------------


class Ansible(Runner):
    name = "ansible"
    note = (
        "ansible-core + ansible.posix.synchronize (compress off, verify_host, use_ssh_args), "
        "fan-out with `command: true`, steps with `copy` (content) and `shell` (creates); forks = N, "
        "pipelining on, no fact gathering, strategy `{strategy}`, ssh args `-o ControlMaster=auto "
        "-o ControlPersist=60s` (no -C) with a fresh ControlPath dir per run"
    )
    strategy = "free"

    def __init__(self, fleet: FleetView, peers: Peers) -> None:
        super().__init__(fleet)
        self.peers = peers
        self.bin, self.collections = self._installed(peers)
        self.note = self.note.format(strategy=self.strategy)
        if not self.bin or not self.bin.exists():
            self.unavailable = "n/a (not installed)"
            return
        ssh_common = f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes"
        interp = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        inv = {
            "all": {
                "children": {
                    "web": {
                        "hosts": {
                            h.name: {"ansible_host": h.address, "ansible_port": h.port, "root": str(h.data_dir)}
                            for h in fleet.hosts
                        }
                    }
                },
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(fleet.key),
                    "ansible_ssh_common_args": ssh_common,
                    "ansible_python_interpreter": interp,
                    **self.extra_vars(),
                },
            }
        }
        self.inventory = self.dir / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))

        def play(tasks: list[dict]) -> list[dict]:
            return [{"hosts": "web", "gather_facts": False, "tasks": tasks}]

        sync = {
            "name": "sync tree",
            "ansible.posix.synchronize": {
                "src": "{{ src }}/",
                "dest": "{{ root }}/site/",
                "delete": True,
                "archive": True,
                "compress": False,
                "verify_host": True,
                "use_ssh_args": True,
            },
        }
        true = {"name": "true", "ansible.builtin.command": "true", "changed_when": False}
        self.sync_yml = self.dir / "sync.yml"
        self.sync_yml.write_text(yaml.safe_dump(play([sync]), sort_keys=False))
        self.true_yml = self.dir / "fanout.yml"
        self.true_yml.write_text(yaml.safe_dump(play([true]), sort_keys=False))
        self.steps_yml = self.dir / "steps.yml"
        self.steps_yml.write_text(yaml.safe_dump(play(self._step_tasks()), sort_keys=False, width=1000))

    @staticmethod
    def _step_tasks() -> list[dict]:
        d = "{{ root }}/steps"
        tasks: list[dict] = []
        for s in stepjob.STEPS:
            if isinstance(s, stepjob.FileStep):
                tasks.append({"name": s.id, "ansible.builtin.copy": {"content": s.content, "dest": f"{d}/{s.path}"}})
            else:
                tasks.append(
                    {"name": s.id, "ansible.builtin.shell": {"cmd": s.shell, "chdir": d, "creates": f"{d}/{s.creates}"}}
                )
        return tasks

    def _installed(self, peers: Peers) -> tuple[Path | None, Path | None]:
        return peers.ansible_bin, peers.ansible_collections

    def extra_vars(self) -> dict:
        """Inventory vars this flavour adds."""
        return {}

    def extra_env(self) -> dict[str, str]:
        """Environment this flavour adds."""
        return {"ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s"}

    def invocation(self, job: str, src: Path, run_dir: Path) -> Invocation:
        env = self.base_env()
        home = run_dir / "ansible-home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        cp = Path("/tmp") / f"bench-acp-{os.getpid()}"  # ControlPath must stay short (108-byte sun_path)
        shutil.rmtree(cp, ignore_errors=True)
        cp.mkdir()
        env.update(
            {
                "ANSIBLE_HOME": str(home),
                "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_GATHERING": "explicit",
                "ANSIBLE_FORKS": str(len(self.fleet.hosts)),
                "ANSIBLE_STRATEGY": self.strategy,
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_DEPRECATION_WARNINGS": "False",
                **self.extra_env(),
            }
        )
        argv = [str(self.bin), "-i", str(self.inventory), "--forks", str(len(self.fleet.hosts))]
        if job == "fanout":
            argv.append(str(self.true_yml))
        elif job in STEP_JOBS:
            argv.append(str(self.steps_yml))
        else:
            argv += [str(self.sync_yml), "-e", json.dumps({"src": str(src)})]
            if job == "dryrun":
                argv += ["--check", "--diff"]
        return Invocation(argv, env)


class AnsibleMitogen(Ansible):
    """The same Ansible (same ansible-core, collection, inventory and playbooks) with Mitogen's
    strategy plugin: one Python interpreter per host kept over one SSH connection, modules run in
    it instead of one ssh exec and interpreter start per task."""

    name = "ansible-mitogen"
    note = (
        "ansible-core + mitogen {mitogen}, strategy `{strategy}` (Mitogen's own SSH: compression off "
        "through `mitogen_ssh_compression: false`, no ControlMaster), otherwise exactly as **ansible**: "
        "the same playbooks, synchronize options, forks = N, pipelining on, no fact gathering"
    )
    strategy = "mitogen_free"

    def __init__(self, fleet: FleetView, peers: Peers) -> None:
        from peers import MITOGEN

        self.note = self.note.replace("{mitogen}", MITOGEN)
        super().__init__(fleet, peers)

    def _installed(self, peers: Peers) -> tuple[Path | None, Path | None]:
        return peers.mitogen_bin, peers.mitogen_collections

    def extra_vars(self) -> dict:
        # Mitogen turns ssh compression on by default; no other tool compresses
        return {"mitogen_ssh_compression": False}

    def extra_env(self) -> dict[str, str]:
        # Mitogen keeps one connection per host itself: a ControlMaster would only add a process
        return {
            "ANSIBLE_STRATEGY_PLUGINS": str(self.peers.mitogen_strategies),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
        }


# -- pyinfra -------------------------------------------------------------------------------


class Pyinfra(Runner):
    name = "pyinfra"
    note = (
        "pyinfra `files.rsync` (flags -a --delete), fan-out with `server.shell('true')`, steps with "
        "`files.put` (from a StringIO: uploaded only when the sha1 differs) and `server.shell` guarded in "
        "the shell (`test -e CREATES || { … }`, pyinfra has no `creates`; it reports such a step as "
        "changed every run); --parallel N"
    )

    def __init__(self, fleet: FleetView, peers: Peers) -> None:
        super().__init__(fleet)
        self.peers = peers
        if not peers.pyinfra_bin or not peers.pyinfra_bin.exists():
            self.unavailable = "n/a (not installed)"
            return
        hosts = [
            (
                h.name,
                {
                    "ssh_hostname": h.address,
                    "ssh_port": h.port,
                    "ssh_user": "root",
                    "ssh_key": str(fleet.key),
                    "ssh_known_hosts_file": str(fleet.known_hosts),
                    "ssh_strict_host_key_checking": "yes",
                    "ssh_look_for_keys": False,
                    "ssh_allow_agent": False,
                    "root": str(h.data_dir),
                },
            )
            for h in fleet.hosts
        ]
        self.inventory = self.dir / "inventory.py"
        self.inventory.write_text(f"web = {hosts!r}\n")
        self.true_py = self.dir / "fanout.py"
        self.true_py.write_text(
            "from pyinfra.operations import server\n\nserver.shell(name='true', commands=['true'])\n"
        )
        self.steps_py = self.dir / "steps_deploy.py"
        self.steps_py.write_text(self._steps_source())

    @staticmethod
    def _steps_source() -> str:
        lines = [
            "from io import StringIO",
            "",
            "from pyinfra import host",
            "from pyinfra.operations import files, server",
            "",
            "d = host.data.root + '/steps'",
        ]
        for s in stepjob.STEPS:
            if isinstance(s, stepjob.FileStep):
                lines.append(f"files.put(name={s.id!r}, src=StringIO({s.content!r}), dest=d + '/' + {s.path!r})")
            else:
                cmd = f" && (test -e {shlex.quote(s.creates)} || {{ {s.shell}; }})"
                lines.append(f"server.shell(name={s.id!r}, commands=['cd ' + d + {cmd!r}])")
        return "\n".join(lines) + "\n"

    def _sync_py(self, src: Path) -> Path:
        p = self.dir / f"sync_{src.name}.py"
        p.write_text(
            "from pyinfra import host\nfrom pyinfra.operations import files\n\n"
            f"files.rsync(name='sync tree', src={str(src) + '/'!r}, dest=host.data.root + '/site/',"
            " flags=['-a', '--delete'])\n"
        )
        return p

    def invocation(self, job: str, src: Path, run_dir: Path) -> Invocation:
        env = self.base_env()
        env["HOME"] = str(self.dir)  # no ~/.ssh/config or agent keys leak in
        env.pop("SSH_AUTH_SOCK", None)
        deploy = self.true_py if job == "fanout" else self.steps_py if job in STEP_JOBS else self._sync_py(src)
        argv = [str(self.peers.pyinfra_bin), "--parallel", str(len(self.fleet.hosts))]
        # the dry run is `--dry` without `-y`: `-y` skips pyinfra's change detection, the part
        # that says what would change
        argv += ["--dry"] if job == "dryrun" else ["-y"]
        argv += [str(self.inventory), str(deploy)]
        return Invocation(argv, env, cwd=self.dir)


class PyinfraSync(Pyinfra):
    """pyinfra's `files.sync`, for the dry run only: the pyinfra operation that compares file by
    file (through a stat and a sha1 fact per file), where `files.rsync` compares nothing."""

    name = "pyinfra-sync"
    note = (
        "pyinfra `files.sync` (delete=True), dry run only: pyinfra's per-file comparison (a fact "
        "per file); `--dry --parallel N`"
    )

    def unavailable_for(self, job: str) -> str | None:
        return self.unavailable or (None if job == "dryrun" else "n/a (dry run only)")

    def _sync_py(self, src: Path) -> Path:
        p = self.dir / f"sync_{src.name}.py"
        p.write_text(
            "from pyinfra import host\nfrom pyinfra.operations import files\n\n"
            f"files.sync(name='sync tree', src={str(src)!r}, dest=host.data.root + '/site', delete=True)\n"
        )
        return p


RUNNERS = ("playbook", "ansible", "ansible-mitogen", "pyinfra", "pyinfra-sync", "rsync")


def make_runners(names: list[str], fleet: FleetView, peers: Peers, inventory_writer) -> dict[str, Runner]:
    out: dict[str, Runner] = {}
    for n in names:
        if n == "rsync":
            out[n] = RsyncFloor(fleet)
        elif n == "playbook":
            out[n] = Playbook(fleet, inventory_writer)
        elif n == "ansible":
            out[n] = Ansible(fleet, peers)
        elif n == "ansible-mitogen":
            out[n] = AnsibleMitogen(fleet, peers)
        elif n == "pyinfra":
            out[n] = Pyinfra(fleet, peers)
        elif n == "pyinfra-sync":
            out[n] = PyinfraSync(fleet, peers)
        else:
            raise ValueError(f"unknown tool {n!r} (choose from {', '.join(RUNNERS)})")
    return out
