from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("meshlink", "0002_outbox_baseline")]

    operations = [
        migrations.AddField(
            model_name="outboxentry",
            name="traceparent",
            field=models.CharField(blank=True, default="", max_length=55),
        ),
    ]
