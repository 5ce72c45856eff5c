"""Cells and the WAN tier: per-model cell summaries exchanged between cells' gateway agents (`core`, `component`)
and the rule a router follows to pick a cell (`cells`)."""
