"""playbook's modules, one per file; each file registers the module of its own name.

`SOURCE_TYPES` maps a `sources:` type to the module that fetches it, so loading a playbook
imports only the modules it uses (a test checks this table against the modules' own
`source_type`).
"""

SOURCE_TYPES = {
    "local": "local_tree",
    "s3": "s3_fetch",
    "npm": "npm_fetch",
    "recorded": "recorded_artifact",
}
