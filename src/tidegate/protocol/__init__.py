"""Sans-IO wire protocols: bytes in, events out, bytes to send.  No asyncio, no sockets, no clock."""
