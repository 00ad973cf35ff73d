"""playbook's modules, one per file; each file registers the module of its own name.

`SOURCE_TYPES` maps a `sources:` type to the module that fetches it, so loading a playbook
imports only the modules it uses (a test checks this table against the modules' own
`source_type`).

Libraries that only modules use are in `modules/_support/` (the registry skips names that start
with `_`). The registry itself is `engine/module.py`, the one engine file allowed to import this
package (to discover the module a step names; .ci/layers.py).
"""

__all__ = ["SOURCE_TYPES"]

SOURCE_TYPES = {
    "local": "local_tree",
    "s3": "s3_fetch",
    "npm": "npm_fetch",
    "recorded": "recorded_artifact",
}
