"""A tenant's page that calls getpaid for the tenant of the request (the resolver)."""

from django.http import HttpRequest, JsonResponse

from django_getpaid_auth import get_session


def payments(request: HttpRequest) -> JsonResponse:
    response = get_session().post(  # no tenant: the current one, from connection.tenant
        "/v2/payments/query", json={}, headers={"Getpaid-Idempotency-Key": "tenants-page-1"}
    )
    return JsonResponse({"schema": request.tenant.schema_name, "status": response.status_code})
