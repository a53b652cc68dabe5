"""docs/cli.md, run as written: every ``$ command`` of its console blocks, in order, in a fresh
directory holding the page's ``myapp.py``, through a real shell and a real ``ironflow``.

Outputs are compared line by line once what changes from run to run is masked: run ids the
engine makes up, times, durations and the worker's id. A run id the page shows is mapped to
the one this session got the first time it appears in an output, and replaced in later
commands. ``ironflow worker`` runs in the background until it prints the page's last idle
line, then gets Ctrl-C (SIGINT).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import attrs
from docs_runner import ROOT

PAGE = ROOT / "docs" / "cli.md"
_CONSOLE = re.compile(r"^```console[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_APP = re.compile(r"^```text[ \t]*\n# myapp\.py\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
_MASKS = [
    (_HEX_ID, "<ID>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b"), "<TIME>"),
    (re.compile(r"\S+:\d+:[0-9a-f]{8}\b"), "<WORKER>"),
    # A code version hashes bytecode, which differs between Python versions.
    (re.compile(r"^code      [0-9a-f]{12}$"), "code      <CODE>"),
    (re.compile(r"\b\d+d\d\dh\b|\b\d+h\d\dm\b|\b\d+m\d\ds\b|\b\d+(?:\.\d+)?(?:ms|s)\b"), "<DUR>"),
]
SLEEP_FIRST = "# after moving the sleep first"


@attrs.frozen
class Command:
    line: str
    expected: tuple[str, ...]


def session() -> list[Command]:
    """The page's commands in order, each with the output it shows."""
    commands: list[Command] = []
    for block in _CONSOLE.finditer(PAGE.read_text(encoding="utf-8")):
        current: list[str] | None = None
        for text in block.group(1).splitlines():
            if text.startswith("$ "):
                if current is not None:
                    commands.append(Command(current[0], tuple(current[1:])))
                current = [text[2:]]
            else:
                assert current is not None, f"output before any command in {PAGE}: {text!r}"
                current.append(text)
        if current is not None:
            commands.append(Command(current[0], tuple(current[1:])))
    return commands


def masked(lines: list[str] | tuple[str, ...]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mask in _MASKS:
            line = pattern.sub(mask, line)
        out.append(" ".join(line.split()))
    while out and not out[-1]:
        out.pop()
    return out


class Shell:
    """Runs the page's commands in ``root`` with ``ironflow`` and ``python`` from this checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shims = root / ".bin"
        shims.mkdir()
        for name, target in (("ironflow", "-m ironflow"), ("python", "")):
            shim = shims / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {target} "$@"\n')
            shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # myapp.py changes within the second
            "COLUMNS": "200",
        }
        for name in ("IRONFLOW_DB", "IRONFLOW_APP", "IRONFLOW_TOKEN"):
            self.env.pop(name, None)
        self.ids: dict[str, str] = {}  # run id on the page -> run id in this session
        self.last_code = 0

    def command(self, line: str) -> str:
        for shown, real in self.ids.items():
            line = line.replace(shown, real)
        return line

    def learn_ids(self, expected: tuple[str, ...], actual: list[str]) -> None:
        shown = _HEX_ID.findall("\n".join(expected))
        real = _HEX_ID.findall("\n".join(actual))
        if len(shown) != len(real):
            return
        for a, b in zip(shown, real, strict=True):
            assert self.ids.setdefault(a, b) == b, f"{a} stands for two runs: {self.ids[a]}, {b}"

    def run(self, command: Command) -> None:
        line = self.command(command.line)
        if line == "echo $?":
            assert [str(self.last_code)] == list(command.expected), (self.last_code, command)
            return
        if line.startswith("ironflow worker "):
            self.worker(line, command)
            return
        done = subprocess.run(
            ["/bin/sh", "-c", line],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        self.last_code = done.returncode
        actual = done.stdout.splitlines()
        if not command.expected:  # the page shows no output (--help, redirections)
            assert done.returncode == 0, (line, done.stdout)
            return
        assert masked(actual) == masked(command.expected), (
            f"$ {line}\n--- the page shows ---\n" + "\n".join(command.expected) + "\n--- got ---\n"
            f"{done.stdout}(exit {done.returncode})"
        )
        self.learn_ids(command.expected, actual)

    def worker(self, line: str, command: Command) -> None:
        """Start it; stop it with Ctrl-C once it prints the page's last line before ``^C``."""
        cut = command.expected.index("^C")
        before, after = masked(command.expected[:cut]), masked(command.expected[cut + 1 :])
        proc = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + line],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.put(text.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            while not seen or masked(seen[-1:]) != before[-1:]:
                text = lines.get(timeout=60)  # bounded: a worker that never gets there fails
                if text is None:
                    raise AssertionError("worker exited early:\n" + "\n".join(seen))
                seen.append(text)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        except BaseException:
            proc.kill()
            proc.wait()
            raise AssertionError(f"$ {line}\n" + "\n".join(seen)) from None
        reader.join(timeout=60)
        while (text := lines.get(timeout=5)) is not None:
            seen.append(text)
        self.last_code = proc.returncode
        got = masked(seen)
        report = f"$ {line}\n--- the page shows ---\n" + "\n".join(command.expected)
        report += "\n--- got ---\n" + "\n".join(seen)
        assert proc.returncode == 0, report
        assert got[0] == before[0], report  # the banner
        assert got[-len(after) :] == after, report  # what it says as it stops
        # Lines that come as runs end (their order between runs may vary), each shown once;
        # the idle lines in between depend on timing: only the last one is waited for.
        told = sorted(text for text in before[1:-1] if "] idle: " not in text)
        assert sorted(text for text in got[1 : -len(after)] if "] idle: " not in text) == told, (
            report
        )


def test_cli_page_examples_run_as_written(tmp_path: Path) -> None:
    found = _APP.search(PAGE.read_text(encoding="utf-8"))
    assert found is not None, "docs/cli.md shows no myapp.py"
    app = found.group(1)
    (tmp_path / "myapp.py").write_text(app, encoding="utf-8")
    run_step = '    text = yield step.run("greet", greet, ctx.event.data["name"])\n'
    sleep_step = '    yield step.sleep("pause", "1s")\n'
    assert run_step in app and sleep_step in app
    shell = Shell(tmp_path)
    commands = session()
    assert len(commands) >= 20
    for command in commands:
        if SLEEP_FIRST in command.line:
            moved = app.replace(sleep_step, "").replace(run_step, sleep_step + run_step)
            (tmp_path / "myapp.py").write_text(moved, encoding="utf-8")
        shell.run(command)
