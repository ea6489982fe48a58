import json
import time

from asgiref.sync import sync_to_async
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from .models import Note


def index(request):
    """A plain synchronous view (Django runs it in a thread under ASGI)."""
    return render(request, "notes/index.html", {"user": request.user})


@sync_to_async
def recent_notes(limit=10):
    return [{"id": note.id, "text": note.text} for note in Note.objects.order_by("-id")[:limit]]


@csrf_exempt  # an API for the example; a real one would authenticate
async def notes(request):
    """An async view: the ORM is synchronous, so every query goes through sync_to_async."""
    if request.method == "POST":
        text = json.loads(request.body or b"{}").get("text", "")
        await sync_to_async(Note.objects.create)(text=text[:200])
    count = await sync_to_async(Note.objects.count)()
    return JsonResponse({"count": count, "notes": await recent_notes()})


async def stream(request):
    """A streamed response: each part reaches the client as it is produced."""

    async def parts():
        for n in range(3):
            yield f"part {n}\n"

    return StreamingHttpResponse(parts(), content_type="text/plain")


@csrf_exempt
def echo(request):
    """Reads the request body as a stream and counts it (a synchronous view, fine under WSGI and ASGI)."""
    total = 0
    while chunk := request.read(65536):
        total += len(chunk)
    return JsonResponse({"bytes": total})


async def blocking(request):
    """The classic mistake: a blocking call inside an async view stalls every other request of the process.

    Run tidegate with --warn-blocking 0.5 and open this page: the log names this view and this line.  The fix is
    ``await asyncio.sleep(...)`` here, or ``await sync_to_async(blocking_call)()`` for real work.
    """
    time.sleep(float(request.GET.get("seconds", "1")))
    return JsonResponse({"slept": True})
