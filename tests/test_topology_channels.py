"""Channels groups across two tidegate instances behind nginx (docs/topologies/nginx.conf), sharing a Redis
channel layer: a message sent to a group through one instance reaches the WebSocket clients that nginx connected
to the other.  Redis, both instances and nginx are real processes, started and stopped here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .ops_helpers import free_port
from .test_django import PROJECT
from .test_django_channels import Client, check_broadcasts, project_env, redis_url  # noqa: F401 (fixtures)
from .topology_helpers import PKI, nginx, tidegate

pytest.importorskip("channels_redis")


@pytest.fixture(scope="module")
def behind_nginx(project_env: dict[str, str],  # noqa: F811 (the fixture imported above)
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("channels")
    ports = [free_port(), free_port()]
    instances = []
    try:
        for port in ports:
            instances.append(tidegate(port, "--app-dir", str(PROJECT), "--proxy-headers", "--forwarded-allow-ips",
                                      "127.0.0.1", app="mysite.asgi:application", env=project_env, cwd=PROJECT))
        with nginx(directory, PKI(directory), ports) as (_, http_port, _):
            yield {"url": f"http://127.0.0.1:{http_port}", "pids": {proc.pid for proc in instances}}
    finally:
        for proc in instances:
            proc.stop()


def test_a_group_message_through_one_instance_reaches_clients_of_the_other(behind_nginx: dict[str, Any]) -> None:
    url = behind_nginx["url"]
    clients: list[Client] = []
    try:
        # nginx spreads the connections over the two instances (round robin); open them until both are reached
        while {client.pid for client in clients} != behind_nginx["pids"]:
            assert len(clients) < 10, "nginx sent every connection to the same instance"
            clients.append(Client(url, "lobby"))
        other_room = Client(url, "kitchen")
        clients.append(other_room)
        check_broadcasts(clients[:-1], other_room)
    finally:
        for client in clients:
            client.close()
