"""REST API of this domain."""
