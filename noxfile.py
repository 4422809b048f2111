"""Development sessions. ``nox`` runs tests, lint and typecheck; ``nox -s demo`` runs the demo."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "3.11"
# The library, then the distributions under contrib/ (each with its own pyproject.toml), installed
# beside it like any third party's: the local server and the two emulators, the reference host and
# the Jira provider.
DISTRIBUTIONS = (
    "-e.[cli,postgres,testing]",
    "-econtrib/localserver",
    "-econtrib/servicenow-emulator",
    "-econtrib/host[postgres,fleet]",
    "-econtrib/jira[emulator]",
)


def install(session: nox.Session, *groups: str) -> None:
    session.install(
        *DISTRIBUTIONS,
        *(dep for group in groups for dep in nox.project.dependency_groups(PYPROJECT, group)),
    )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite offline: emulator over real HTTP, cassettes replayed (record mode none),
    in a process per core."""
    install(session, "test")
    session.run("pytest", *(session.posargs or ["--record-mode=none", "--numprocesses=auto"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check with mypy (strict on ticketing_core)."""
    install(session, "typecheck")
    session.run("mypy")


@nox.session(python=PYTHON, default=False)
def record(session: nox.Session) -> None:
    """Re-record the HTTP cassettes against the emulator (or a real instance, see README)."""
    install(session, "test")
    session.run("pytest", "-m", "vcr", "--record-mode=rewrite", *session.posargs)


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Time the outbox (100 work notes, 50 ms), a sequential workload beside plain httpx (20 ms),
    and two-way sync: notification to anomaly, the receiver's rate (beside a fleet on Redis), the
    poll's and pull's reads."""
    install(session)
    session.run("python", "benchmarks/bench_outbox.py")
    session.run("python", "benchmarks/bench_sequential.py", *session.posargs)
    session.run("python", "benchmarks/bench_inbound.py")


@nox.session(name="bench-scale", python=PYTHON, default=False)
def bench_scale(session: nox.Session) -> None:
    """The fleet on PostgreSQL + Redis: the instance limit's floor, one worker process against
    four, and the outbox's overhead per note."""
    install(session)
    session.run("python", "benchmarks/bench_scale.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """Run the seed's whole flow offline against the bundled ServiceNow emulator."""
    install(session)
    session.run("ticketing", "demo")
