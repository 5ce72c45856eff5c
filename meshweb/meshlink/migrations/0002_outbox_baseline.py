"""Start the outbox at version 1 with nothing replayable below it: objects written before the outbox existed reach
agents through the snapshot that every agent at version 0 gets."""

from django.db import migrations


def baseline(apps, schema_editor):  # type: ignore[no-untyped-def]
    counter = apps.get_model("meshlink", "OutboxCounter")
    counter.objects.update_or_create(pk=1, defaults={"version": 1, "pruned_through": 1})


class Migration(migrations.Migration):
    dependencies = [("meshlink", "0001_initial")]

    operations = [migrations.RunPython(baseline, migrations.RunPython.noop)]
