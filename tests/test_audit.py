"""Every change to tiers, models, rules, plans and keys is recorded append-only: who, when, what,
before and after, from the admin, a management command or code."""

import pytest
from django.db import DatabaseError, connection, transaction

from accounts.services import api_key_create, api_key_revoke
from audit.models import AppendOnlyError, ChangeRecord
from billing.plans import plan_set
from billing.webhooks import webhook_set
from routing.models import CatalogModel, RuleEffect, RulesRevision, Tier, TierModelRule

from . import processes
from .test_admin import model_form

pytestmark = pytest.mark.django_db


def records_for(obj):
    return list(
        ChangeRecord.objects.filter(object_type=obj._meta.label_lower, object_id=str(obj.pk)).order_by("id")
    )


def test_an_admin_edit_is_recorded_with_who_before_and_after(admin_client, admin_user, catalog):
    haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
    response = admin_client.post(
        "/admin/routing/catalogmodel/claude-haiku-4-5/change/", model_form(haiku.id, multiplier="2")
    )
    assert response.status_code == 302
    [record] = records_for(haiku)
    assert record.source == "admin"
    assert record.actor.startswith(f"{admin_user.username} (user id {admin_user.pk})")
    assert record.action == "update"
    assert record.before["multiplier"] == "1.0000" and record.after["multiplier"] == "2.0000"
    assert record.changed_fields == ["multiplier"]


def test_a_refused_admin_edit_records_nothing(admin_client, catalog):
    from .test_admin import TIER_FORM

    before = ChangeRecord.objects.count()
    response = admin_client.post(
        "/admin/routing/tier/m1/change/", {**TIER_FORM, "default_model": "claude-opus-4-6"}
    )
    assert response.status_code == 200
    assert ChangeRecord.objects.count() == before


def test_code_changes_are_recorded_as_code_and_a_save_that_changes_nothing_is_not(make_user):
    user = make_user("m1", requests_per_minute=None, max_concurrent_runs=None)  # the tier's limits
    [created] = records_for(user.plan)
    assert (created.source, created.action, created.before) == ("code", "create", None)
    assert created.after["tier_id"] == "m1"
    plan_set(user=user, tier_slug="m1")  # the same tier again
    assert len(records_for(user.plan)) == 1
    plan_set(user=user, tier_slug="m5", token_quota=123)
    update = records_for(user.plan)[-1]
    assert update.changed_fields == ["tier_id", "token_quota_override"]
    assert (update.before["tier_id"], update.after["tier_id"], update.after["token_quota_override"]) == (
        "m1",
        "m5",
        123,
    )


def test_secrets_are_recorded_as_fingerprints(make_user):
    user = make_user("m1")
    secret = webhook_set(plan=user.plan, url="https://hooks.example.com/x")
    record = records_for(user.plan)[-1]
    assert record.after["alert_webhook_url"].startswith(
        "https://hooks.example.com/… sha256:"
    )  # a path can hold a token
    assert record.after["alert_webhook_secret"].startswith("sha256:")
    assert secret not in str(record.after) and "/x" not in str(record.after)
    key, raw = api_key_create(user=user)
    [created] = records_for(key)
    assert raw not in str(created.after) and key.key_hash not in str(created.after)


def test_bulk_updates_and_deletes_are_recorded_and_move_the_rules_revision(catalog):
    revision = RulesRevision.objects.get(pk=1).value
    assert Tier.objects.filter(slug__in=["m1", "m5"]).update(max_tokens=2048) == 2
    assert RulesRevision.objects.get(pk=1).value > revision
    for slug in ["m1", "m5"]:
        record = records_for(Tier.objects.get(slug=slug))[-1]
        assert record.after["max_tokens"] == 2048 and record.before["max_tokens"] != 2048
    rule = TierModelRule.objects.create(tier_id="m10", model_id="claude-opus-4-6", effect=RuleEffect.DENY)
    pk = rule.pk
    TierModelRule.objects.filter(pk=pk).delete()
    deleted = ChangeRecord.objects.filter(object_type="routing.tiermodelrule", object_id=str(pk)).order_by(
        "id"
    )
    assert [r.action for r in deleted] == ["create", "delete"]
    assert deleted.last().before["effect"] == "deny" and deleted.last().after is None


def test_revoking_a_key_is_recorded(make_user):
    user = make_user("m1")
    key, _ = api_key_create(user=user)
    api_key_revoke(key=key)
    record = records_for(key)[-1]
    assert record.changed_fields == ["revoked_at"] and record.before["revoked_at"] is None


def test_a_change_and_its_record_commit_together(catalog):
    before = ChangeRecord.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        Tier.objects.filter(slug="m1").update(max_tokens=1)
        raise RuntimeError("rolled back")
    assert ChangeRecord.objects.count() == before
    assert Tier.objects.get(slug="m1").max_tokens != 1


def test_records_cannot_be_changed_or_deleted_by_the_orm_or_by_sql(make_user):
    record = records_for(make_user("m1").plan)[0]
    with pytest.raises(AppendOnlyError):
        record.save()
    with pytest.raises(AppendOnlyError):
        record.delete()
    with pytest.raises(AppendOnlyError):
        ChangeRecord.objects.filter(pk=record.pk).update(actor="someone else")
    with pytest.raises(AppendOnlyError):
        ChangeRecord.objects.filter(pk=record.pk).delete()
    for sql in [
        "UPDATE audit_changerecord SET actor = 'x' WHERE id = %s",
        "DELETE FROM audit_changerecord WHERE id = %s",
    ]:
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [record.pk])
    assert ChangeRecord.objects.get(pk=record.pk).actor == record.actor


def test_the_admin_shows_records_and_allows_no_edit(admin_client, make_user):
    record = records_for(make_user("m1").plan)[0]
    assert admin_client.get("/admin/audit/changerecord/").status_code == 200
    page = admin_client.get(f"/admin/audit/changerecord/{record.pk}/change/")
    assert page.status_code == 200 and "tier_id" in page.content.decode()
    assert (
        admin_client.post(f"/admin/audit/changerecord/{record.pk}/change/", {"actor": "x"}).status_code == 403
    )
    assert admin_client.get("/admin/audit/changerecord/add/").status_code == 403
    assert (
        admin_client.post(f"/admin/audit/changerecord/{record.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert ChangeRecord.objects.get(pk=record.pk).actor == record.actor


@pytest.mark.django_db(transaction=True)
def test_a_management_command_is_recorded_as_that_command(catalog):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create(username="cmd-user")
    env = processes.base_env(DATABASE_URL=processes.test_database_url())
    processes.manage(env, "set_tier", "cmd-user", "m5")
    record = ChangeRecord.objects.filter(object_type="billing.plan").latest("id")
    assert record.source == "command"
    assert record.actor.startswith("manage.py set_tier (os user ")
    assert record.after["tier_id"] == "m5" and record.after["user_id"] == user.pk


def test_a_save_of_some_fields_records_only_what_it_wrote(make_user):
    user = make_user("m1")
    stale = type(user.plan).objects.get(pk=user.plan.pk)
    plan_set(user=user, tier_slug="m5")
    webhook_set(plan=stale, url="https://hooks.example.com/y")  # saves the webhook fields only
    record = records_for(user.plan)[-1]
    assert record.changed_fields == ["alert_webhook_secret", "alert_webhook_url"]
    assert record.after["tier_id"] == "m5"  # as in the database, not the stale object's m1
    assert type(user.plan).objects.get(pk=user.plan.pk).tier_id == "m5"


def test_bulk_create_is_recorded_and_moves_the_rules_revision(catalog):
    revision = RulesRevision.objects.get(pk=1).value
    CatalogModel.objects.bulk_create(
        [
            CatalogModel(
                id=f"ollama/bulk-{i}",
                display_name="bulk",
                provider="ollama",
                multiplier=0,
                min_tier_id="access",
            )
            for i in range(2)
        ]
    )
    assert RulesRevision.objects.get(pk=1).value > revision
    assert (
        ChangeRecord.objects.filter(
            object_type="routing.catalogmodel", object_id__startswith="ollama/bulk-", action="create"
        ).count()
        == 2
    )
    with pytest.raises(TypeError):
        CatalogModel.objects.bulk_create(
            [CatalogModel(id="ollama/x", provider="ollama", multiplier=0, min_tier_id="access")],
            ignore_conflicts=True,
        )


def test_an_update_through_a_join_on_a_nullable_key_works_and_is_recorded(catalog):
    assert (
        CatalogModel.objects.select_related("fallback")
        .filter(id="claude-opus-4-6")
        .update(display_name="Opus!")
        == 1
    )
    assert records_for(CatalogModel.objects.get(id="claude-opus-4-6"))[-1].after["display_name"] == "Opus!"


def test_loaddata_is_recorded_and_reaches_running_processes(catalog, tmp_path):
    from django.core.management import call_command

    revision = RulesRevision.objects.get(pk=1).value
    haiku = CatalogModel.objects.get(id="claude-haiku-4-5")
    fixture = tmp_path / "haiku.json"
    fixture.write_text(
        '[{"model": "routing.catalogmodel", "pk": "claude-haiku-4-5", '
        f'"fields": {{"display_name": "{haiku.display_name}", "provider": "anthropic",'
        f' "multiplier": "2", "min_tier": "{haiku.min_tier_id}", "fallback": null, "is_active": true}}}}]'
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert RulesRevision.objects.get(pk=1).value > revision
    assert records_for(haiku)[-1].after["multiplier"] == "2.0000"


def test_deleting_a_user_records_the_deletion_of_their_plan_and_keys(make_user):
    user = make_user("m1")
    key, _ = api_key_create(user=user)
    plan_pk = user.plan.pk
    user.delete()
    assert ChangeRecord.objects.filter(
        object_type="billing.plan", object_id=str(plan_pk), action="delete"
    ).exists()
    assert ChangeRecord.objects.filter(
        object_type="accounts.apikey", object_id=str(key.pk), action="delete"
    ).exists()
