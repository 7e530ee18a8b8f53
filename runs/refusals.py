"""The answers of POST /agents/{id}/run that refuse a run for a limit (CONTRACT sections 6, 10 and
11), and the X-RateLimit-* headers every answer of it carries when the user has a minute limit."""

from django.utils import timezone
from rest_framework import status

from billing.plans import limits_for
from billing.quota import QuotaExceeded
from billing.selectors import minute_window, plan_for
from billing.throttle import MinuteWindow, RateLimited
from maschina.errors import ApiError
from routing.snapshot import get_rules


def rate_headers(window: MinuteWindow | None) -> dict:
    if window is None:
        return {}
    return {
        "X-RateLimit-Limit": str(window.limit),
        "X-RateLimit-Remaining": str(window.remaining),
        "X-RateLimit-Reset": str(window.reset),
    }


def minute_window_of(user) -> MinuteWindow | None:
    """The user's minute window as it stands (for an answer that admitted nothing: a replay)."""
    plan = plan_for(user)
    limits = limits_for(plan, get_rules().tiers[plan.tier_id])
    return minute_window(user_id=user.pk, per_minute=limits.per_minute, now=timezone.now())


def key_model_not_allowed(model_id: str, allowed_models: list[str]) -> ApiError:
    return ApiError(
        "key_model_not_allowed",
        f"This API key may not run {model_id}; it may run: {', '.join(allowed_models)}.",
        status.HTTP_403_FORBIDDEN,
        model=model_id,
        allowed_models=allowed_models,
    )


def rate_limited(limited: RateLimited) -> ApiError:
    if limited.scope == "concurrency":
        message = f"Your plan runs at most {limited.limit} runs at once; wait for one to finish."
    else:
        message = f"Your plan admits at most {limited.limit} runs a minute; retry in {limited.retry_after} s."
    return ApiError(
        "rate_limited",
        message,
        status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(limited.retry_after), **rate_headers(limited.window)},
        scope=limited.scope,
        limit=limited.limit,
    )


def _quota_message(exceeded: QuotaExceeded) -> str:
    if exceeded.quota == "runs":
        return "The monthly runs quota of your plan is used up."
    if exceeded.quota == "tokens":
        whose, used_up = (
            "your plan's monthly token quota",
            "The monthly tokens quota of your plan is used up.",
        )
    else:
        whose, used_up = (
            "this API key's monthly_token_limit",
            "The monthly_token_limit of this API key is used up.",
        )
    room = exceeded.limit - exceeded.used - (exceeded.reserved or 0)
    if room <= 0 or exceeded.requested is None:
        return used_up
    # Room is left, only not for this run's worst case: say so, and what would fit.
    message = (
        f"This run reserves up to {exceeded.requested} tokens (its input and max_tokens at the model's"
        f" multiplier), more than the {room} left of {whose}"
    )
    fit = exceeded.max_tokens_fit
    if fit is not None and fit >= 1:
        return message + f"; a max_tokens of {fit} or less fits."
    return message + "; a shorter input or a cheaper model is needed."


def quota_exceeded(exceeded: QuotaExceeded) -> ApiError:
    extra = {
        "quota": exceeded.quota,
        "used": exceeded.used,
        "limit": exceeded.limit,
        "resets_at": exceeded.resets_at,
    }
    if exceeded.quota in ("tokens", "key_tokens"):
        extra.update(reserved=exceeded.reserved, requested=exceeded.requested)
    return ApiError(
        "quota_exceeded",
        _quota_message(exceeded),
        status.HTTP_429_TOO_MANY_REQUESTS,
        headers=rate_headers(exceeded.window),
        **extra,
    )
