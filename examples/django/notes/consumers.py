"""A chat room: every message sent by one client reaches every client in the room, through the channel layer.

With the in-memory layer the room spans one process; with ``channels_redis`` (``REDIS_URL``) it spans every
process on every host that shares the Redis server.
"""

import os

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        user = self.scope["user"]
        await self.send_json({"type": "welcome", "user": user.get_username() or "anonymous", "pid": os.getpid()})

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "echo":
            await self.send_json({"type": "echo", "text": content.get("text", "")})
            return
        await self.channel_layer.group_send(self.group, {
            "type": "chat.message", "text": str(content.get("text", "")), "sender_pid": os.getpid(),
        })

    async def chat_message(self, event):
        await self.send_json({"type": "message", "text": event["text"], "sender_pid": event["sender_pid"],
                              "pid": os.getpid()})
