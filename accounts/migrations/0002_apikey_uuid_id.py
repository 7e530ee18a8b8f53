"""Keys get UUID ids (CONTRACT section 1: ids are UUIDs): the old integer id is replaced, keeping
every existing key. Nothing referred to a key's id before, so no foreign key has to follow."""

import uuid

from django.db import migrations, models


def fill_uuids(apps, schema_editor):
    ApiKey = apps.get_model("accounts", "ApiKey")
    for key in ApiKey.objects.all().only("pk"):
        ApiKey.objects.filter(pk=key.pk).update(uid=uuid.uuid4())


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.AddField("apikey", "uid", models.UUIDField(null=True, editable=False)),
        migrations.RunPython(fill_uuids, migrations.RunPython.noop),
        migrations.RemoveField("apikey", "id"),
        migrations.AlterField(
            "apikey",
            "uid",
            models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, serialize=False),
        ),
        migrations.RenameField("apikey", "uid", "id"),
    ]
