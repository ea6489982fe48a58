from django.contrib import admin
from django.urls import path
from notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("notes/", views.notes, name="notes"),
    path("stream/", views.stream, name="stream"),
    path("echo/", views.echo, name="echo"),
    path("blocking/", views.blocking, name="blocking"),
    path("admin/", admin.site.urls),
]
