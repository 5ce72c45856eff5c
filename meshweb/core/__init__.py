"""Cross-cutting pieces of the portal: correlation ids, JSON logs, API conventions, base models."""
