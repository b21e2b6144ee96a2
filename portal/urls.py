from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("portal.api_urls")),
    path("o/<slug:slug>/", views.dashboard, name="dashboard"),
    path("", include("accounts.urls")),
    path("", include("capacity.urls")),
    path("", include("billing.urls")),
]

handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"
