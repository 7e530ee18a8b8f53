from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from billing.models import Plan
from billing.webhooks import SIGNATURE_HEADER, webhook_set


class Command(BaseCommand):
    help = (
        "Set USERNAME's quota-alert webhook URL ('none' removes it); "
        "prints the signing secret on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("url")

    def handle(self, username, url, **options):
        plan = Plan.objects.filter(user__username=username).first()
        if plan is None:
            if not get_user_model().objects.filter(username=username).exists():
                raise CommandError(f"no user {username!r}")
            raise CommandError(f"{username!r} has no plan yet (use set_tier)")
        try:
            secret = webhook_set(plan=plan, url="" if url.lower() == "none" else url)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages))
        if not plan.alert_webhook_url:
            self.stdout.write(f"{username} has no alert webhook")
            return
        self.stdout.write(f"alerts for {username} go to {url}, signed in {SIGNATURE_HEADER}; the secret:")
        self.stdout.write(secret)
