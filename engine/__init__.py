"""playbook's engine. The folders are the flow, lowest layer first (docs/architecture.md):

    model/       the values every stage shares (playbook, inventory, plans, results, events)
    yamlio/      YAML as text: the strict loader with locations, and edits that keep comments
    connection/  how the engine reaches a host (SSH, local, in-memory fake) and OpenSSH's rules
    load/        1. load + validate: playbooks, inventories, -e and secrets, schemas
    record/      what the controller remembers: history, saved plans, rollback, artifact records
    report/      presenters of events and results (terminal, JSON, Markdown)
    execute/     2.-5. check -> graph -> plan -> apply, across the fleet
    api.py       the programmatic API, which never prints; cli/ is the command line over it

module.py is the module contract and registry; the modules themselves are the top-level
`modules` package. No file imports a folder ranked above its own, with one exception: the
registry imports `modules.<name>` to discover the module a step names (.ci/layers.py checks it).
"""
