from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import api as accounts_api
from billing import api as billing_api
from billing import api_usage
from capacity import api as capacity_api
from capacity import api_catalog

urlpatterns = [
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
        name="api-schema",
    ),
    path(
        "docs/",
        # Swagger UI adds style elements of its own as it draws; on this page only (no nonce
        # is used here, so the keyword is not overridden) they are allowed. Scripts still load
        # only from this site.
        csp_update({"style-src-elem": [UNSAFE_INLINE]})(
            SpectacularSwaggerSplitView.as_view(
                url_name="api-schema",
                permission_classes=[],
                authentication_classes=[],
                # An HTML template: DRF's OPTIONS description cannot be rendered with it.
                http_method_names=["get", "head"],
            )
        ),
        name="api-docs",
    ),
    path("gpu-models/", api_catalog.GpuModels.as_view(), name="api-gpu-models"),
    path("regions/", api_catalog.Regions.as_view(), name="api-regions"),
    path("offerings/", capacity_api.Offerings.as_view(), name="api-offerings"),
    path("reservations/", capacity_api.Reservations.as_view(), name="api-reservations"),
    path(
        "reservations/<str:public_id>/",
        capacity_api.ReservationDetail.as_view(),
        name="api-reservation",
    ),
    path(
        "reservations/<str:public_id>/cancel/",
        capacity_api.CancelReservation.as_view(),
        name="api-cancel",
    ),
    path(
        "reservations/<str:public_id>/extend/",
        billing_api.ReservationExtend.as_view(),
        name="api-extend",
    ),
    path("reservations/<str:public_id>/pay/", billing_api.PayReservation.as_view(), name="api-pay"),
    path("usage/", api_usage.Usage.as_view(), name="api-usage"),
    path("payments/", billing_api.Payments.as_view(), name="api-payments"),
    path("refunds/", billing_api.Refunds.as_view(), name="api-refunds"),
    path("invoices/", billing_api.Invoices.as_view(), name="api-invoices"),
    path("keys/", accounts_api.Keys.as_view(), name="api-keys-list"),
    path("keys/verify/", billing_api.VerifyKey.as_view(), name="api-keys-verify"),
    path("keys/<str:public_id>/revoke/", accounts_api.RevokeKey.as_view(), name="api-key-revoke"),
]
