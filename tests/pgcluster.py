"""A throwaway PostgreSQL cluster for one test session, and the policy for when there is none.

``make test`` needs nothing running beforehand: the first test that asks for PostgreSQL starts a
private cluster (``initdb`` into a fresh temp dir, a free port on 127.0.0.1, the unix socket in
that dir, trust auth), and the session stops it and removes the dir. PostgreSQL refuses to run as
root, so under root (CI) the server runs as ``nobody``. ``IRONFLOW_TEST_POSTGRES=postgresql://...``
points the suite at an existing server instead.

Without binaries the PostgreSQL tests are skipped, except under ``CI=true``, where a missing
server is a failure: CI must prove the PostgreSQL store, never pass by skipping it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

EXTERNAL_URL_ENV = "IRONFLOW_TEST_POSTGRES"
# Only this directory is searched when set: a developer's own build, or an empty dir to
# simulate a machine without PostgreSQL.
BINDIR_ENV = "IRONFLOW_TEST_PG_BINDIR"
DATABASE = "ironflow_test"
SUPERUSER = "ironflow"
RUN_AS_WHEN_ROOT = "nobody"
PG_CTL_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "install Debian's postgresql to run them"


def ci_enabled(env: Mapping[str, str]) -> bool:
    return env.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in REQUIRED_BINARIES)


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "9.6" < "15" < "16", numerically.
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_bindir(
    env: Mapping[str, str],
    pg_config: str | None = None,
    lib_root: Path = Path("/usr/lib/postgresql"),
) -> Path | None:
    """Where ``initdb``/``pg_ctl``/``postgres`` live, or None.

    ``pg_config --bindir`` first (the install the developer chose), then the newest Debian
    ``/usr/lib/postgresql/*/bin``. PATH alone is never enough: Debian does not put ``initdb``
    there.
    """
    if BINDIR_ENV in env:
        explicit = Path(env[BINDIR_ENV])
        return explicit if _has_binaries(explicit) else None
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_binaries(Path(out)):
            return Path(out)
    candidates = [d for d in lib_root.glob("*/bin") if _has_binaries(d)]
    return max(candidates, key=_version_key) if candidates else None


@attrs.frozen
class Availability:
    """What this session does for PostgreSQL tests.

    ``kind`` is ``"external"`` (use ``url``), ``"cluster"`` (start one from ``bindir``),
    ``"skip"`` or ``"fail"`` (``message`` says why).
    """

    kind: str
    url: str | None = None
    bindir: Path | None = None
    message: str = ""


def decide(env: Mapping[str, str], bindir: Path | None) -> Availability:
    """The skip/fail policy, a pure function of the environment and the binaries found."""
    url = env.get(EXTERNAL_URL_ENV, "").strip()
    if url:
        return Availability("external", url=url)
    if bindir is not None:
        return Availability("cluster", bindir=bindir)
    if ci_enabled(env):
        return Availability(
            "fail",
            message=(
                "PostgreSQL not found and CI=true: CI must run the PostgreSQL tests, not skip "
                "them. Install Debian's postgresql (.ci/run does it as root), or set "
                f"{EXTERNAL_URL_ENV}=postgresql://... to use an existing server."
            ),
        )
    return Availability(
        "skip",
        message=(
            "PostgreSQL not found (no initdb via pg_config --bindir or /usr/lib/postgresql/*/bin, "
            f"and no {EXTERNAL_URL_ENV}); {INSTALL_HINT}"
        ),
    )


def detect(env: Mapping[str, str] | None = None) -> Availability:
    env = os.environ if env is None else env
    return decide(env, find_bindir(env, pg_config=shutil.which("pg_config")))


class ClusterError(RuntimeError):
    """The throwaway cluster could not be started; the message carries the server log tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Cluster:
    """A private PostgreSQL server in a temp dir; ``start()`` then ``stop()`` (idempotent)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.url = ""
        self._dir: Path | None = None
        self._user: pwd.struct_passwd | None = None

    @property
    def datadir(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    @property
    def logfile(self) -> Path:
        assert self._dir is not None
        return self._dir / "server.log"

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {
                "user": self._user.pw_uid,
                "group": self._user.pw_gid,
                "extra_groups": [],  # drop root's supplementary groups too
            }
        env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LANG": "C",
            "LC_ALL": "C",
            "HOME": str(self._dir),
        }
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self._dir,  # the unprivileged user may not be able to enter ours
            env=env,
            check=False,
            **kwargs,
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None) -> ClusterError:
        output = "" if result is None else (result.stdout + result.stderr).strip()
        return ClusterError(
            f"throwaway PostgreSQL: {what} (bindir {self.bindir}, port {self.port}, "
            f"dir {self._dir})\n{output}\n--- server log tail ---\n{_tail(self.logfile)}"
        )

    def start(self) -> str:
        """Create and start the cluster; return the URL of database ``ironflow_test``."""
        parent: str | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(RUN_AS_WHEN_ROOT)
            except KeyError as exc:
                raise ClusterError(
                    f"running as root, and PostgreSQL refuses root: no user "
                    f"{RUN_AS_WHEN_ROOT!r} to run the throwaway server as"
                ) from exc
            if not _traversable_by_others(Path(tempfile.gettempdir())):
                parent = "/tmp"  # the server's user must reach its own directory
        self._dir = Path(tempfile.mkdtemp(prefix="ironflow-pg-", dir=parent))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _start(self) -> None:
        assert self._dir is not None
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.datadir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",  # only initdb's own files; the running server keeps fsync on
            timeout=120,
        )
        if result.returncode != 0:
            raise self._fail("initdb failed", result)
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = _free_port()
            self._configure()
            result = self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.datadir),
                "--log",
                str(self.logfile),
                "--wait",
                "--timeout",
                str(PG_CTL_TIMEOUT_S),
                timeout=PG_CTL_TIMEOUT_S + 15,
            )
            if result.returncode == 0:
                break
            if "could not bind" not in _tail(self.logfile):
                raise self._fail("pg_ctl start failed", result)
        else:
            raise self._fail("pg_ctl start failed three times on a taken port", result)
        base = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}"
        _admin(f"{base}/postgres", f"CREATE DATABASE {DATABASE}")
        self.url = f"{base}/{DATABASE}"

    def _configure(self) -> None:
        # ironflow_test.conf is included last, so a retry on another port simply rewrites it.
        conf = self.datadir / "postgresql.conf"
        include = "include_if_exists = 'ironflow_test.conf'\n"
        if include not in conf.read_text():
            with conf.open("a") as fh:
                fh.write("\n" + include)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self._dir}'",
            # Durability is measured on this server: keep every guarantee of a production one.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            # Small where it changes speed, not semantics.
            "shared_buffers": "32MB",
            "max_connections": "100",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
        }
        (self.datadir / "ironflow_test.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory."""
        if self._dir is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    try:
                        result = self._run(
                            "pg_ctl",
                            "stop",
                            "--pgdata",
                            str(self.datadir),
                            "--mode",
                            mode,
                            "--wait",
                            "--timeout",
                            str(PG_CTL_TIMEOUT_S),
                            timeout=PG_CTL_TIMEOUT_S + 15,
                        )
                    except subprocess.TimeoutExpired:
                        continue
                    if result.returncode == 0:
                        break
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _admin(url: str, *statements: str) -> None:
    """Run statements in autocommit (CREATE DATABASE cannot run in a transaction)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        for statement in statements:
            conn.execute(statement)


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections put their tables in ``schema`` (the design's ``options``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for key, value in query if key == "options"]
    rest = [(key, value) for key, value in query if key != "options"]
    option = f"-csearch_path={schema}"
    rest.append(("options", " ".join([*options, option]) if options else option))
    # Percent-encoded: libpq refuses a second '=' in a query parameter and reads no '+' as space.
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))


def new_schema(url: str) -> tuple[str, Callable[[], None]]:
    """Create a fresh schema; return its URL and a function that drops it (bounded wait)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _admin(url, f"CREATE SCHEMA {schema}")

    def drop() -> None:
        # A test that leaks a connection holding a lock must not hang the session.
        _admin(url, "SET lock_timeout = '10s'", f"DROP SCHEMA {schema} CASCADE")

    return with_search_path(url, schema), drop
