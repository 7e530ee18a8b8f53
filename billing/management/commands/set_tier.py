from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from billing.plans import UNLIMITED, plan_set
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


def rate_limit(value: str):
    """A rate-limit override: a number, `unlimited`, or `none` to follow the tier again."""
    if value.lower() == "unlimited":
        return UNLIMITED
    return quota(value)


class Command(BaseCommand):
    help = "Create USERNAME if missing and put them on TIER, with optional quota and rate-limit overrides."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("tier")
        parser.add_argument(
            "--token-quota", type=quota, default=..., help="billed tokens per month, or 'none' to remove"
        )
        parser.add_argument(
            "--run-quota", type=quota, default=..., help="runs per month, or 'none' to remove"
        )
        parser.add_argument(
            "--requests-per-minute",
            type=rate_limit,
            default=...,
            help="runs admitted per minute, 'unlimited', or 'none' to follow the tier",
        )
        parser.add_argument(
            "--max-concurrent-runs",
            type=rate_limit,
            default=...,
            help="runs queued or executing at once, 'unlimited', or 'none' to follow the tier",
        )

    def handle(
        self, username, tier, token_quota, run_quota, requests_per_minute, max_concurrent_runs, **options
    ):
        if not Tier.objects.filter(slug=tier).exists():
            known = ", ".join(Tier.objects.values_list("slug", flat=True))
            raise CommandError(f"unknown tier {tier!r} (known: {known})")
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        try:
            plan = plan_set(
                user=user,
                tier_slug=tier,
                token_quota=token_quota,
                run_quota=run_quota,
                requests_per_minute=requests_per_minute,
                max_concurrent_runs=max_concurrent_runs,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages))
        self.stdout.write(
            f"{username} is on {plan.tier_id}"
            f" (token quota override: {plan.token_quota_override},"
            f" run quota override: {plan.run_quota_override},"
            f" requests per minute override: {_shown(plan, 'requests_per_minute')},"
            f" max concurrent runs override: {_shown(plan, 'max_concurrent_runs')})"
        )


def _shown(plan, limit: str):
    return UNLIMITED if getattr(plan, f"{limit}_unlimited") else getattr(plan, f"{limit}_override")
