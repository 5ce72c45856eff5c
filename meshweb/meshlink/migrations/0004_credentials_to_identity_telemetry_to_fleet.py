"""Node credentials move to the identity app and the telemetry agents report to the fleet app: the tables are
renamed to their new owners' names here, and the models leave this app's state (identity 0002 and fleet 0003 take
them up, state only, so no row is copied)."""

from django.db import migrations

MOVED = {
    "NodeCredential": "identity_nodecredential",
    "NodeTelemetry": "fleet_nodetelemetry",
    "GpuTelemetry": "fleet_gputelemetry",
    "TelemetrySample": "fleet_telemetrysample",
}


class Migration(migrations.Migration):
    dependencies = [("meshlink", "0003_outboxentry_traceparent")]

    operations = [
        *(migrations.AlterModelTable(name=model, table=table) for model, table in MOVED.items()),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name=model) for model in MOVED],
        ),
    ]
