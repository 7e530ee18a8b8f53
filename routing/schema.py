"""The OpenAPI schema of a model id in a request body: the ids the catalog has now, exact rows and
the ids a pattern row matches, so generated requests (schemathesis) know which ids are valid. The
schema is generated per request of /api/schema/, so it follows the catalog's edits."""

import re

from django.db import DatabaseError
from drf_spectacular.extensions import OpenApiSerializerFieldExtension

from .access import MAX_MODEL_ID_LENGTH
from .snapshot import get_rules


def model_id_schema(*, active_only: bool) -> dict:
    """A nullable string: an exact catalog id, or one that extends a pattern row's prefix."""
    try:
        rules = get_rules()
    except DatabaseError:  # generated offline (manage.py spectacular without a database)
        return {"type": "string", "nullable": True, "example": "claude-haiku-4-5"}
    models = [m for m in rules.models.values() if m.is_active or not active_only]
    exact = sorted(m.id for m in models if not m.id.endswith("*"))
    prefixes = sorted(m.id[:-1] for m in models if m.id.endswith("*"))
    choices: list[dict] = [{"type": "string", "enum": exact}] if exact else []
    choices += [
        {"type": "string", "pattern": f"^{re.escape(p)}[^*]+$", "maxLength": MAX_MODEL_ID_LENGTH}
        for p in prefixes
    ]
    return {"nullable": True, "anyOf": choices} if choices else {"type": "string", "nullable": True}


class CatalogModelIdFieldExtension(OpenApiSerializerFieldExtension):
    """Any field class with a `catalog_model_id` of "any" or "active" (an agent's model, a run body's
    model): a class attribute, as DRF copies declared fields by their arguments alone."""

    target_class = "rest_framework.fields.Field"
    match_subclasses = True

    @classmethod
    def _matches(cls, target) -> bool:
        return getattr(target, "catalog_model_id", None) is not None

    def map_serializer_field(self, auto_schema, direction):
        return model_id_schema(active_only=self.target.catalog_model_id == "active")


class CatalogModelListFieldExtension(OpenApiSerializerFieldExtension):
    """Any field class with `catalog_model_list = True` (an API key's `models`): null, or a
    non-empty list of the ids model_id_schema describes."""

    target_class = "rest_framework.fields.Field"
    match_subclasses = True

    @classmethod
    def _matches(cls, target) -> bool:
        return getattr(target, "catalog_model_list", False)

    def map_serializer_field(self, auto_schema, direction):
        item = {k: v for k, v in model_id_schema(active_only=False).items() if k != "nullable"}
        return {"type": "array", "items": item, "minItems": 1, "nullable": True}


class TierCappedFieldExtension(OpenApiSerializerFieldExtension):
    """An integer field its serializer caps by the caller's tier, named in the serializer's
    `tier_caps` ({field name: TierInfo attribute}): its schema's maximum is the highest cap of any
    tier now, so generated values are within what some plan allows."""

    target_class = "rest_framework.fields.IntegerField"
    match_subclasses = True

    @classmethod
    def _matches(cls, target) -> bool:
        return super()._matches(target) and target.field_name in getattr(target.parent, "tier_caps", {})

    def map_serializer_field(self, auto_schema, direction):
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        attribute = self.target.parent.tier_caps[self.target.field_name]
        try:
            caps = [getattr(tier, attribute) for tier in get_rules().tiers.values()]
        except DatabaseError:
            return schema
        if caps and None not in caps:
            schema["maximum"] = max(caps)
        return schema
