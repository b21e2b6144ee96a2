from django.urls import path

from . import views

urlpatterns = [
    path("stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    path("o/<slug:slug>/reservations/<str:public_id>/pay/", views.pay, name="pay"),
    path("o/<slug:slug>/reservations/<str:public_id>/pay/card/", views.pay_card, name="pay-card"),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/pay/saved/", views.pay_saved, name="pay-saved"
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/extend/",
        views.reservation_extend,
        name="reservation-extend",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/extensions/<str:extension_id>/pay/",
        views.extension_pay,
        name="extension-pay",
    ),
    path(
        "o/<slug:slug>/reservations/<str:public_id>/extensions/<str:extension_id>/pay/card/",
        views.extension_pay_card,
        name="extension-pay-card",
    ),
    path(
        "o/<slug:slug>/payments/<str:payment_id>/status/",
        views.payment_status,
        name="payment-status",
    ),
    path("o/<slug:slug>/billing/", views.billing, name="billing"),
    path("o/<slug:slug>/usage/", views.usage, name="usage"),
    path("o/<slug:slug>/billing/cards/new/", views.card_add, name="card-add"),
    path(
        "o/<slug:slug>/billing/cards/<str:payment_method_id>/default/",
        views.card_default,
        name="card-default",
    ),
    path(
        "o/<slug:slug>/billing/cards/<str:payment_method_id>/remove/",
        views.card_remove,
        name="card-remove",
    ),
    path("o/<slug:slug>/billing/receipts/<str:payment_id>/", views.receipt, name="receipt"),
]
