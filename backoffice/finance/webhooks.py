"""Finance admin for Stripe webhook events and their replay."""

import json
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from backoffice.actor import staff_actor
from billing import webhooks
from billing.models import WebhookEvent, WebhookProcessing
from core.staff import staff_may

from .common import FinanceAdmin, run


class ProcessingFilter(admin.SimpleListFilter):
    title = "processing"
    parameter_name = "processing"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("none", "Not picked up"), *WebhookProcessing.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "none":
            return queryset.filter(processing__isnull=True)
        if self.value() in WebhookProcessing.Status.values:
            return queryset.filter(processing__status=self.value())
        return queryset


def _processing(event: WebhookEvent) -> WebhookProcessing | None:
    try:
        return event.processing
    except WebhookProcessing.DoesNotExist:
        return None


@admin.register(WebhookEvent)
class WebhookEventAdmin(FinanceAdmin):
    list_display = [
        "stripe_event_id",
        "type",
        "object_id",
        "processing_status",
        "attempts",
        "received_at",
    ]
    list_filter = [ProcessingFilter, "type", ("received_at", admin.DateFieldListFilter)]
    list_select_related = ["processing"]
    id_prefixes = {"evt_": "stripe_event_id"}
    search_fields = ["=object_id"]
    search_help_text = "An event id (evt_…) or the id of the object it is about (pi_…, ch_…)."
    actions = ["replay"]
    fieldsets = [
        (None, {"fields": ["stripe_event_id", "type", "object_id", "received_at"]}),
        (
            "Processing",
            {"fields": ["processing_status", "attempts", "last_error", "processed_at"]},
        ),
        ("Payload", {"fields": ["payload_json"]}),
    ]
    readonly_fields = [
        "processing_status",
        "attempts",
        "last_error",
        "processed_at",
        "payload_json",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("processing")

    @admin.display(description="processing", ordering="processing__status")
    def processing_status(self, obj: WebhookEvent) -> str:
        processing = _processing(obj)
        if processing is None:
            return "Not picked up"
        return processing.get_status_display()

    @admin.display(description="attempts", ordering="processing__attempts")
    def attempts(self, obj: WebhookEvent) -> int:
        processing = _processing(obj)
        return processing.attempts if processing else 0

    @admin.display(description="last error")
    def last_error(self, obj: WebhookEvent) -> str:
        processing = _processing(obj)
        return (processing.last_error if processing else "") or "—"

    @admin.display(description="processed at")
    def processed_at(self, obj: WebhookEvent) -> Any:
        processing = _processing(obj)
        return processing.processed_at if processing and processing.processed_at else "—"

    @admin.display(description="payload")
    def payload_json(self, obj: WebhookEvent) -> str:
        return format_html(
            '<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
            json.dumps(obj.payload, indent=2, sort_keys=True),
        )

    def has_replay_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return staff_may(request.user, "billing.replay_webhookevent")

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/replay/",
                self.admin_site.admin_view(self.replay_view),
                name="billing_webhookevent_replay",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        if self.has_replay_permission(request):
            extra_context["replay_url"] = reverse(
                "admin:billing_webhookevent_replay", args=[object_id]
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def _replay(self, request: HttpRequest, events: Iterable[WebhookEvent]) -> None:
        run(
            self,
            request,
            events,
            lambda event: webhooks.webhook_replay(event=event, actor=staff_actor(request)),
            name=lambda event: event.stripe_event_id,
            verb="Queued for processing again",
        )

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = self.object_or_404(request, object_id)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._replay(request, [event])
            return HttpResponseRedirect(self.change_url(event))
        return self.confirm_page(
            request,
            title=f"Replay {event.stripe_event_id}",
            intro=REPLAY_INTRO,
            headers=REPLAY_HEADERS,
            rows=[replay_row(event)],
            submit="Yes, replay it",
            cancel_url=self.change_url(event),
        )

    @admin.action(description="Replay selected events…", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if self.too_many(request, queryset):
            return None
        events = list(queryset.select_related("processing").order_by("pk"))
        if request.POST.get("confirm") == "yes":
            self._replay(request, events)
            return None
        return self.confirm_page(
            request,
            title="Replay webhook events",
            intro=REPLAY_INTRO,
            headers=REPLAY_HEADERS,
            rows=[replay_row(event) for event in events],
            submit="Yes, replay them",
            action="replay",
            queryset=queryset,
        )


REPLAY_INTRO = (
    "Processing runs again for each event: the object is read from Stripe afresh and only "
    "changes that are still due are applied, so an event that was already applied changes "
    "nothing."
)
REPLAY_HEADERS = ["Event", "Type", "Object", "Processing", "Attempts"]


def replay_row(event: WebhookEvent) -> list[Any]:
    processing = _processing(event)
    return [
        event.stripe_event_id,
        event.type,
        event.object_id,
        processing.get_status_display() if processing else "Not picked up",
        processing.attempts if processing else 0,
    ]
