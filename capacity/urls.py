from django.urls import path

from . import views

urlpatterns = [
    path("o/<slug:slug>/capacity/", views.capacity_search, name="capacity-search"),
    path("o/<slug:slug>/capacity/calendar/", views.capacity_calendar, name="capacity-calendar"),
    path("o/<slug:slug>/reservations/", views.reservation_list, name="reservation-list"),
    path("o/<slug:slug>/reservations/new/", views.reservation_new, name="reservation-new"),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/",
        views.reservation_detail,
        name="reservation-detail",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/status/",
        views.reservation_status,
        name="reservation-status",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/kubeconfig/",
        views.reservation_kubeconfig,
        name="reservation-kubeconfig",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/cancel/",
        views.reservation_cancel,
        name="reservation-cancel",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/accept/",
        views.quote_accept,
        name="reservation-quote-accept",
    ),
]
