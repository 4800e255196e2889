# At most one active credential per tenant and environment, enforced by the database on
# every backend: the conditional unique constraint of 0001 is skipped by Django on
# MariaDB/MySQL (models.W036), so it is replaced by a unique constraint on
# (tenant, active_environment), a generated column that is NULL while inactive.

from django.core.management.base import CommandError
from django.db import migrations, models

SHOWN = 20


def refuse_duplicate_active_credentials(apps, schema_editor):
    """Fail with instructions, not an IntegrityError, when duplicates already exist.

    Only possible where 0001's constraint was not created (MariaDB/MySQL).
    """
    ClientCredential = apps.get_model("django_getpaid_auth", "ClientCredential")
    duplicates = list(
        ClientCredential.objects.using(schema_editor.connection.alias)
        .filter(is_active=True)
        .values("tenant_id", "environment")
        .annotate(rows=models.Count("pk"))
        .filter(rows__gt=1)
        .order_by("tenant_id", "environment")
    )
    if not duplicates:
        return
    lines = []
    for group in duplicates[:SHOWN]:
        pks = ClientCredential.objects.using(schema_editor.connection.alias).filter(
            tenant_id=group["tenant_id"], environment=group["environment"], is_active=True
        ).order_by("pk").values_list("pk", flat=True)
        lines.append(
            f"  tenant_id={group['tenant_id']} environment={group['environment']}: "
            f"active credentials pk={', '.join(str(pk) for pk in pks)}"
        )
    if len(duplicates) > SHOWN:
        lines.append(f"  ... and {len(duplicates) - SHOWN} more")
    raise CommandError(
        "django_getpaid_auth 0002 adds a database constraint: at most one ACTIVE "
        "ClientCredential per tenant and environment. These tenants have more than one:\n"
        + "\n".join(lines)
        + "\nDeactivate all but one of each (admin: untick \"active\"; or SQL: UPDATE "
        f"{ClientCredential._meta.db_table} SET is_active = FALSE WHERE id IN (...)), then "
        "run migrate again. Nothing was changed."
    )


class Migration(migrations.Migration):

    dependencies = [
        ("django_getpaid_auth", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(refuse_duplicate_active_credentials, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="clientcredential",
            name="getpaid_auth_one_active_credential",
        ),
        migrations.AddField(
            model_name="clientcredential",
            name="active_environment",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Case(models.When(is_active=True, then=models.F("environment"))),
                output_field=models.CharField(max_length=16, null=True),
                verbose_name="environment while active",
            ),
        ),
        migrations.AddConstraint(
            model_name="clientcredential",
            constraint=models.UniqueConstraint(
                fields=("tenant", "active_environment"),
                name="getpaid_auth_one_active_credential",
                violation_error_message="This tenant already has an active credential for this environment.",
            ),
        ),
    ]
