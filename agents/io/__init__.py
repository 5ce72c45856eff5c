"""The IO adapter: dataset and checkpoint stores as a signal source (see docs/parts/io.md)."""
