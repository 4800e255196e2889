from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GetpaidAuthConfig(AppConfig):
    name = "django_getpaid_auth"
    label = "django_getpaid_auth"
    verbose_name = _("getpaid authentication")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, receivers  # noqa: F401  (checks register on import)

        receivers.connect()
