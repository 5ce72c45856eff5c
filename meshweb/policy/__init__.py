"""Policies: SLOs per model/tenant, routing policies (strategy, A/B, shadow) and admission thresholds."""
