"""`run`: `execute` as `playbook run` records it (history, artifact records, webhooks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine.api.executing import execute
from engine.api.ids import new_run_id, unused_release_id
from engine.execute.options import RunOptions
from engine.model.config import Loaded
from engine.model.events import Event
from engine.model.results import RunSummary
from engine.record.savedplan import file_hash

if TYPE_CHECKING:  # imported where used: `load` and `open_early` must not wait for the graph library
    from engine.connection.pool import ConnectionPool
    from engine.execute.scheduler import Executor

__all__ = ["run"]


def run(
    loaded: Loaded,
    options: RunOptions,
    *,
    subscribers: Sequence[Callable[[Event], None]] = (),
    on_executor: Callable[[Executor], None] | None = None,
    pool: ConnectionPool | None = None,
    connect: Callable[[str], Any] | None = None,
    plan_hash: str = "",
    rollback: bool = False,
    warn: Callable[[str], None] | None = None,
) -> RunSummary:
    """`execute`, recorded as `playbook run` records it: in run mode the run goes into the history
    (`<state_dir>/history.sqlite`, scrubbed of secrets) as it happens, and each source's deployed
    digest into the artifact records once the run succeeded. A plan records nothing.

    In run mode a new run id is assigned, and a release id unless `options` has one (a resume,
    a saved plan, a rollback). `plan_hash` is the saved plan being applied, if any. A run also
    tells the playbook's and the inventory's `notify:` webhooks (engine/report/notify.py;
    `rollback` says it is a rollback); what they fail to receive is passed to `warn`."""
    subs = list(subscribers)
    history = None
    notifier = None
    if options.mode == "run":
        from engine.record.deployed import ArtifactRecorder
        from engine.record.history import HistoryRecorder
        from engine.record.state import open_history
        from engine.secrets import SCRUBBER

        history = open_history(options.state, options.state_dir)
        if options.shard is None:  # a part of a sharded run keeps the run's id (engine/execute/sharded.py)
            options.run_id = new_run_id()
        options.release_id = options.release_id or unused_release_id(history)
        subs.insert(
            0,
            HistoryRecorder(
                history,
                name=loaded.playbook.name,
                release_id=options.release_id,
                limit=options.limit,
                playbook_hash=file_hash(loaded.playbook.path),
                inventory_hash=file_hash(loaded.inventory.path),
                plan_hash=plan_hash,
                scrub=SCRUBBER.scrub_obj,
            ),
        )
        subs.append(ArtifactRecorder(options.state_dir, loaded.playbook.name))
        notifier = _notifier(loaded, options, rollback=rollback, warn=warn)
        if notifier is not None:
            subs.append(notifier)
    try:
        return execute(loaded, options, subscribers=subs, on_executor=on_executor, pool=pool, connect=connect)
    finally:
        if history is not None:
            history.close()
        if notifier is not None:
            notifier.close()


def _notifier(loaded: Loaded, options: RunOptions, *, rollback: bool, warn: Callable[[str], None] | None) -> Any:
    """The run's webhook notifier, or None when neither the playbook nor the inventory has
    `notify:`. URL templates render over the controller's vars (playbook vars, -e, secrets)."""
    specs = [("playbook", i, n) for i, n in enumerate(loaded.playbook.notify)]
    specs += [("inventory", i, n) for i, n in enumerate(loaded.inventory.notify)]
    if not specs:
        return None
    from engine import templating
    from engine.errors import LoadError
    from engine.execute.context import HostContexts
    from engine.report.notify import Notifier, Target

    ctx = HostContexts(loaded.playbook, loaded.inventory, options, started=0.0).host(None)
    targets = []
    for where, i, spec in specs:
        label = f"{where} notify[{i}]"
        url = str(templating.render(str(spec["url"]), ctx, what=f"{label}.url"))
        if not url.startswith(("http://", "https://")):
            raise LoadError(
                f"{label}: 'url' must be an http:// or https:// URL (got a value starting "
                f"{url.split(':', 1)[0][:10]!r})"
            )
        targets.append(Target.from_config(spec, url, label))
    return Notifier(
        targets,
        loaded.playbook.name,
        release_id=options.release_id,
        rollback=rollback,
        warn=warn or (lambda _text: None),
    )
