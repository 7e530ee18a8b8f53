from django.contrib import admin

from .models import Agent


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "model", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "owner__username", "id"]
