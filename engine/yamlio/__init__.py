"""YAML as text: the strict loader that keeps locations (document), one-scalar edits (scalars) and round-trip edits that keep every untouched line (roundtrip)."""
