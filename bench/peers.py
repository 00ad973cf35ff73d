"""Install the tools playbook is compared with, each into its own virtualenv under bench/.venvs.

- ansible: ansible-core (pinned) plus the `ansible.posix` collection, unpacked from the
  `ansible` community wheel (Galaxy is not reachable here) into a collections dir beside it;
- ansible-mitogen: the same ansible-core and collection plus the pinned `mitogen` package, whose
  strategy plugins (`ansible_mitogen/plugins/strategy`) the runner points Ansible at;
- pyinfra (pinned);
- plot: matplotlib (pinned), only for drawing docs/bench-scaling.svg (bench/plot.py).

Everything is idempotent: a venv whose marker file names the pinned version is left alone.
playbook itself runs from this Python's installed `playbook` (or the repo's .venv if present).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ANSIBLE_CORE",
    "ANSIBLE",
    "MITOGEN",
    "PYINFRA",
    "MATPLOTLIB",
    "Peers",
    "ensure_peers",
    "ensure_plot",
    "playbook_command",
]

ANSIBLE_CORE = "2.19.14"
ANSIBLE = "12.3.0"  # the community package built on ansible-core 2.19; only ansible.posix is taken
# Mitogen 0.3.54 runs on ansible-core 2.19 (its loader sets only a minimum version, 2.10, and the
# bench checks every run's result): both Ansible venvs use the same ansible-core and collection,
# so the two Ansible rows differ only by the strategy plugin
MITOGEN = "0.3.54"
PYINFRA = "3.10.0"
MATPLOTLIB = "3.10.9"

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"


@dataclass(frozen=True)
class Peers:
    """Where each installed tool lives."""

    ansible_bin: Path | None
    ansible_collections: Path | None
    pyinfra_bin: Path | None
    mitogen_bin: Path | None = None  # ansible-playbook of the venv that also has mitogen
    mitogen_collections: Path | None = None
    mitogen_strategies: Path | None = None  # ansible_mitogen/plugins/strategy


def _run(argv: list[str], **kw) -> None:
    print("  $", " ".join(map(str, argv)), flush=True)
    subprocess.run(argv, check=True, **kw)


def _venv(path: Path) -> Path:
    if not (path / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(path)])
    return path / "bin" / "python"


def _marker_ok(venv: Path, want: str) -> bool:
    m = venv / ".bench-installed"
    return m.exists() and m.read_text().strip() == want


def _ensure_ansible(name: str = "ansible", extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    venv = VENVS / name
    want = " ".join([f"ansible-core=={ANSIBLE_CORE}", *extra, f"ansible.posix from ansible=={ANSIBLE}"])
    collections = venv / "collections"
    if not _marker_ok(venv, want):
        print(f"installing {want} into {venv}", flush=True)
        py = _venv(venv)
        _run([str(py), "-m", "pip", "install", "-q", f"ansible-core=={ANSIBLE_CORE}", *extra])
        with tempfile.TemporaryDirectory() as tmp:
            _run([str(py), "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, f"ansible=={ANSIBLE}"])
            wheel = next(Path(tmp).glob("ansible-*.whl"))
            prefix = "ansible_collections/ansible/posix/"
            if collections.exists():
                shutil.rmtree(collections)
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if n.startswith(prefix)]
                if not members:
                    raise RuntimeError(f"{wheel.name} has no {prefix}")
                for name in members:
                    # the wheel is from PyPI, but never write outside the target all the same
                    target = (collections / name).resolve()
                    if not str(target).startswith(str(collections.resolve()) + os.sep):
                        raise RuntimeError(f"unsafe path in wheel: {name}")
                    zf.extract(name, collections)
        (venv / ".bench-installed").write_text(want + "\n")
    return venv / "bin" / "ansible-playbook", collections


def _ensure_pyinfra() -> Path:
    venv = VENVS / "pyinfra"
    want = f"pyinfra=={PYINFRA}"
    if not _marker_ok(venv, want):
        print(f"installing {want} into {venv}", flush=True)
        py = _venv(venv)
        _run([str(py), "-m", "pip", "install", "-q", want])
        (venv / ".bench-installed").write_text(want + "\n")
    return venv / "bin" / "pyinfra"


def _mitogen_strategies(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/ansible_mitogen/plugins/strategy"))
    if not found:
        raise RuntimeError(f"no ansible_mitogen/plugins/strategy under {venv}")
    return found[0]


def ensure_plot() -> Path:
    """The Python of bench/.venvs/plot, with the pinned matplotlib (installed when missing)."""
    venv = VENVS / "plot"
    want = f"matplotlib=={MATPLOTLIB}"
    VENVS.mkdir(parents=True, exist_ok=True)
    if not _marker_ok(venv, want):
        print(f"installing {want} into {venv}", flush=True)
        py = _venv(venv)
        _run([str(py), "-m", "pip", "install", "-q", want])
        (venv / ".bench-installed").write_text(want + "\n")
    return venv / "bin" / "python"


def ensure_peers(tools: set[str]) -> Peers:
    """Install (when missing) the peers among `tools` and say where they are."""
    VENVS.mkdir(parents=True, exist_ok=True)
    ans_bin = ans_col = pyi = mito_bin = mito_col = mito_strat = None
    # a peer that cannot be installed is reported as "n/a (not installed)"; the rest still runs
    if "ansible" in tools:
        try:
            ans_bin, ans_col = _ensure_ansible()
        except (OSError, RuntimeError, subprocess.CalledProcessError, StopIteration) as exc:
            print(f"  ansible not installed: {exc}", file=sys.stderr, flush=True)
    if "ansible-mitogen" in tools:
        try:
            mito_bin, mito_col = _ensure_ansible("ansible-mitogen", (f"mitogen=={MITOGEN}",))
            mito_strat = _mitogen_strategies(VENVS / "ansible-mitogen")
        except (OSError, RuntimeError, subprocess.CalledProcessError, StopIteration) as exc:
            print(f"  ansible-mitogen not installed: {exc}", file=sys.stderr, flush=True)
    if "pyinfra" in tools or "pyinfra-sync" in tools:
        try:
            pyi = _ensure_pyinfra()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"  pyinfra not installed: {exc}", file=sys.stderr, flush=True)
    return Peers(ans_bin, ans_col, pyi, mito_bin, mito_col, mito_strat)


def playbook_command() -> list[str]:
    """argv prefix that runs playbook: the repo's .venv if present, else this Python's install."""
    venv_py = REPO / ".venv" / "bin" / "python"
    py = str(venv_py) if venv_py.exists() else sys.executable
    return [py, "-m", "engine.cli"]


def compile_playbook() -> None:
    """Byte-compile the repository's packages, as `pip install` does for every installed package
    (the peers' included). An editable install leaves them uncompiled, and with
    PYTHONDONTWRITEBYTECODE set each timed run would compile them again."""
    subprocess.run(
        [playbook_command()[0], "-m", "compileall", "-q", str(REPO / "engine"), str(REPO / "modules")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    print(ensure_peers({"ansible", "ansible-mitogen", "pyinfra"}))
    print(ensure_plot())
