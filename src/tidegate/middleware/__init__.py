"""Plain ASGI wrappers the server can put around an application."""
