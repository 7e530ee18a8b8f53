from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from billing.plans import plan_set
from routing.models import Tier


def quota(value: str):
    if value.lower() == "none":
        return None
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"a quota is a whole number or 'none', not {value!r}")
    if number < 0:
        raise CommandError("a quota cannot be negative")
    return number


class Command(BaseCommand):
    help = "Create USERNAME if missing and put them on TIER, with optional monthly quota overrides."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("tier")
        parser.add_argument(
            "--token-quota", type=quota, default=..., help="billed tokens per month, or 'none' to remove"
        )
        parser.add_argument(
            "--run-quota", type=quota, default=..., help="runs per month, or 'none' to remove"
        )

    def handle(self, username, tier, token_quota, run_quota, **options):
        if not Tier.objects.filter(slug=tier).exists():
            known = ", ".join(Tier.objects.values_list("slug", flat=True))
            raise CommandError(f"unknown tier {tier!r} (known: {known})")
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        try:
            plan = plan_set(user=user, tier_slug=tier, token_quota=token_quota, run_quota=run_quota)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages))
        self.stdout.write(
            f"{username} is on {plan.tier_id}"
            f" (token quota override: {plan.token_quota_override},"
            f" run quota override: {plan.run_quota_override})"
        )
