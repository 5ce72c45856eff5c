"""The telemetry models, moved from the meshlink app: their tables were renamed there (meshlink 0004); this takes
them into the fleet's state only."""

import django.db.models.deletion
from django.db import migrations, models


def _id() -> models.BigAutoField:
    return models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0002_nodeevent_nodequarantine"),
        ("meshlink", "0004_credentials_to_identity_telemetry_to_fleet"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="NodeTelemetry",
                    fields=[
                        ("id", _id()),
                        ("at", models.DateTimeField()),
                        ("data", models.JSONField(default=dict)),
                        (
                            "node",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE, related_name="telemetry", to="fleet.node"
                            ),
                        ),
                    ],
                ),
                migrations.CreateModel(
                    name="GpuTelemetry",
                    fields=[
                        ("id", _id()),
                        ("uuid", models.CharField(max_length=96, unique=True)),
                        ("index", models.PositiveSmallIntegerField(default=0)),
                        ("at", models.DateTimeField()),
                        ("data", models.JSONField(default=dict)),
                        (
                            "node",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="gpu_telemetry",
                                to="fleet.node",
                            ),
                        ),
                    ],
                    options={"ordering": ["node_id", "index", "uuid"]},
                ),
                migrations.CreateModel(
                    name="TelemetrySample",
                    fields=[
                        ("id", _id()),
                        ("at", models.DateTimeField()),
                        ("data", models.JSONField(default=dict)),
                        (
                            "node",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="telemetry_samples",
                                to="fleet.node",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["node_id", "at"],
                        "indexes": [models.Index(fields=["node", "at"], name="telemetry_node_at")],
                    },
                ),
            ],
        ),
    ]
