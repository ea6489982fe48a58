"""The one ASGI layer: scopes and exchanges shared by every wire protocol.  No asyncio."""
