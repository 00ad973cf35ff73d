"""The programmatic API: load, check, plan, run. It never prints; results are values and events.

`execute` is one plan or run. What the `playbook` command does around it is here too, so any
Python caller gets it, one file per entry point, in the order of the flow:

- `loading`: `load` a playbook and its inventory, `check` them before any host is touched;
- `executing`: `open_early` (the SSH handshakes overlap the checks), `execute`, the deploy locks;
- `recording`: `run`, recorded in the history and the artifact records, told to webhooks;
- `resume`: `prepare_resume` continues an interrupted run; `shards`: `prepare_part` (`--shard`);
- `saved`: `save_plan` / `prepare_apply` write a plan and apply exactly it;
- `rollbacks`: `prepare_rollback` goes back to a recorded release, `rollback_report` says how it went;
- `drifts`: `drift` compares the hosts with what was deployed there.

The CLI (`engine.cli`) parses, calls these (as `api.<name>`), and prints.
"""

from __future__ import annotations

from engine.api.drifts import drift
from engine.api.executing import execute, open_early
from engine.api.ids import new_release_id, new_run_id
from engine.api.loading import check, load
from engine.api.recording import run
from engine.api.resume import prepare_resume
from engine.api.rollbacks import Rollback, prepare_rollback, rollback_report
from engine.api.saved import CONFIGURED_KEY, SavedApply, plan_key, prepare_apply, save_plan
from engine.api.shards import prepare_part
from engine.load.inputs import find_inventory, parse_extra_vars, resolve_secrets
from engine.model.config import Loaded
from engine.record.savedplan import file_hash

__all__ = [
    "Loaded",
    "load",
    "find_inventory",
    "parse_extra_vars",
    "check",
    "open_early",
    "execute",
    "new_run_id",
    "new_release_id",
    "file_hash",
    "resolve_secrets",
    "run",
    "prepare_resume",
    "prepare_part",
    "plan_key",
    "CONFIGURED_KEY",
    "save_plan",
    "SavedApply",
    "prepare_apply",
    "Rollback",
    "prepare_rollback",
    "rollback_report",
    "drift",
]
