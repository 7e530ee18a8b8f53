from django.urls import path

from .views import BaselineApi

urlpatterns = [path("baseline", BaselineApi.as_view())]
