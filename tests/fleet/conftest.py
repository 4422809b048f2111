"""A fleet for real: ``ticketing worker`` processes and a ``serve --broker`` host, on PostgreSQL,
with Redis and with RabbitMQ, in front of the ServiceNow emulator over HTTP.

Each test has its own PostgreSQL schema and its own queue name (the Redis key prefix too), and
deletes its queues and keys afterwards: other users of the services are left alone. Its workers
have a temporary directory of their own (their metrics folders), removed afterwards too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pika
import pytest
import redis
from servicenow_emulator import Emulator
from servicenow_emulator.server import run_in_thread
from ticketing_host.app import create_app, runtime_of
from ticketing_host.runtime import HostRuntime
from ticketing_host.server import serve_in_thread
from ticketing_host.settings import Settings

from ..conftest import ADMIN_TOKEN, SECRET_KEY, postgres_schema

TICKETING = str(Path(sys.executable).parent / "ticketing")
REDIS_URL = os.environ.get("TICKETING_TEST_REDIS", "redis://127.0.0.1:6379/11")
RABBITMQ_URL = os.environ.get("TICKETING_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
API_TOKEN = "fleet-api-token"
# Short enough that a killed worker's claims pass on within a test, long enough for a delivery.
TIMING = {"lease_seconds": 4.5, "doubt_seconds": 2.0, "delivery_deadline": 3.0}
INSTANCE_LIMIT = 4


@attrs.frozen
class Broker:
    kind: str
    url: str
    queue: str

    def lose_messages(self) -> None:
        """What a broker restart or a flush does to this test's messages: they are gone."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            for key in client.scan_iter(f"{self.queue}:*"):
                client.delete(key)
            client.close()
        else:
            with rabbitmq_channel(self.url) as channel:
                for queue in (self.queue, f"{self.queue}.DQ"):
                    channel.queue_purge(queue)


class rabbitmq_channel:
    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))

    def __enter__(self) -> Any:
        return self.connection.channel()

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()


@contextmanager
def queue_of_its_own(kind: str) -> Iterator[Broker]:
    """A queue on Redis or RabbitMQ for one test; its queues and keys deleted afterwards."""
    queue = f"test-{uuid.uuid4().hex[:10]}"
    url = REDIS_URL if kind == "redis" else RABBITMQ_URL
    yield Broker(kind, url, queue)
    if kind == "redis":
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{queue}:*"):
            client.delete(key)
        client.close()
    else:
        with rabbitmq_channel(url) as channel:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    with queue_of_its_own(request.param) as made:
        yield made


@pytest.fixture
def fleet_database() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def instance() -> Iterator[Any]:
    """An emulator of its own, answering in 20 ms and refusing (429) beyond the instance limit."""
    with run_in_thread(Emulator(latency_ms=20)) as running:
        running.emulator.max_in_flight = INSTANCE_LIMIT
        yield running


class Workers:
    """``ticketing worker`` processes, each in a session of its own, as on separate machines."""

    def __init__(self, database: str, broker: Broker, temp: Path) -> None:
        self.database, self.broker, self.temp = database, broker, temp
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *,
        threads: int = 4,
        access: Sequence[str] = ("--allow-http", "--allow-private-hosts"),
        **options: Any,
    ) -> subprocess.Popen[bytes]:
        """A worker with ``access`` flags (by default those the emulator needs) and options."""
        settings = TIMING | {"instance_concurrency": INSTANCE_LIMIT, "relay_interval": 1.0}
        settings |= options
        arguments = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        process = subprocess.Popen(
            [TICKETING, "worker", "--database", self.database, "--broker", self.broker.url,
             "--queue", self.broker.queue, "--threads", str(threads), *access, *arguments],
            env=os.environ | {"TICKETING_SECRET_KEY": SECRET_KEY, "TMPDIR": str(self.temp)},
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its processes: a machine lost, nothing gets to clean up."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self.running.remove(process)

    def kill_all(self) -> None:
        for process in list(self.running):
            self.kill(process)

    def metrics_folders(self) -> set[Path]:
        return set(self.temp.glob("ticketing-metrics-*"))


@pytest.fixture
def workers(fleet_database: str, broker: Broker) -> Iterator[Workers]:
    with tempfile.TemporaryDirectory(prefix="ticketing-fleet-") as temp:
        started = Workers(fleet_database, broker, Path(temp))
        yield started
        started.kill_all()


@attrs.frozen
class FleetHost:
    url: str
    api: httpx.Client
    app: Any

    @property
    def runtime(self) -> HostRuntime:
        return runtime_of(self.app)


@pytest.fixture
def start_fleet_host(fleet_database: str, broker: Broker) -> Iterator[Any]:
    with ExitStack() as stack:

        def start(**options: Any) -> FleetHost:
            settings = Settings(**{
                "database": fleet_database, "public_url": "https://qualytics.example",
                "allow_http": True, "allow_private_hosts": True, "secret_key": SECRET_KEY,
                "api_token": API_TOKEN, "broker": broker.url, "queue": broker.queue,
                "relay_interval": 1.0, **TIMING, **options,
            })  # fmt: skip
            app = create_app(settings)
            running = stack.enter_context(serve_in_thread(app))
            api = stack.enter_context(httpx.Client(
                base_url=running.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30,
            ))  # fmt: skip
            return FleetHost(running.url, api, app)

        yield start


def connect_instance(host: FleetHost, instance_url: str) -> None:
    body = {"type": "servicenow", "api_url": instance_url, "api_access_token": ADMIN_TOKEN}
    assert host.api.post("/api/integrations", json=body).status_code == 201
