"""The asyncio edge: drivers own transports, timers, tasks and back-pressure; the server owns listeners."""
