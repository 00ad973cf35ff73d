"""Load and validate: playbooks, inventories (static and dynamic), extra vars and secrets, the JSON Schemas they are checked against."""
