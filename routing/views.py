from drf_spectacular.utils import extend_schema
from rest_framework.generics import GenericAPIView

from .access import is_allowed
from .selectors import tier_slug_of
from .serializers import CatalogModelSerializer, TierSerializer
from .snapshot import get_rules


class TierListApi(GenericAPIView):
    serializer_class = TierSerializer

    @extend_schema(operation_id="tiers_list", responses=TierSerializer(many=True))
    def get(self, request):
        tiers = sorted(get_rules().tiers.values(), key=lambda t: (t.rank, t.slug))
        page = self.paginate_queryset(tiers)
        return self.get_paginated_response(TierSerializer(page, many=True).data)


class ModelListApi(GenericAPIView):
    serializer_class = CatalogModelSerializer

    @extend_schema(operation_id="models_list", responses=CatalogModelSerializer(many=True))
    def get(self, request):
        rules = get_rules()
        tier = rules.tiers[tier_slug_of(request.user)]
        entries = sorted((m for m in rules.models.values() if m.is_active), key=lambda m: (m.provider, m.id))
        page = self.paginate_queryset(entries)
        assert page is not None  # the API's pagination always has a limit (maschina.pagination)
        context = {
            "allowed": {m.id for m in page if is_allowed(rules, tier, m)},
            "default": tier.default_model,
        }
        return self.get_paginated_response(CatalogModelSerializer(page, many=True, context=context).data)
