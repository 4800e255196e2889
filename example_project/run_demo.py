#!/usr/bin/env python3
"""Run the django-getpaid-auth demo with one command, on any machine with Python >= 3.10.

    python3 example_project/run_demo.py              # set up and serve on 127.0.0.1:8000
    python3 example_project/run_demo.py --check-only # set up, check, exit 0/non-zero

Why a standard-library script: a fresh checkout has no Django, so this creates a
virtualenv (``<repo>/.venv-demo``), installs the package with its ``example`` and
``httpx`` extras (the payments page is an async view) into it once, and then runs
``manage.py demo`` there with the given arguments. The install is skipped while
pyproject.toml is unchanged, so later runs start at once.
The exit status is the demo command's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

if sys.version_info < (3, 10):  # noqa: UP036  (this script may be run by an old python3)
    sys.exit("run_demo.py needs Python 3.10 or newer (django-getpaid-auth requires it).")

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-demo"
MANAGE = REPO / "example_project" / "manage.py"
STAMP = VENV / "django-getpaid-auth-demo.stamp"
MIN_PIP = (21, 3)  # editable installs of pyproject-only projects (PEP 660)
#: The example's dependencies, and httpx for the async payments page (aget_session).
EXTRAS = "example,httpx"


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the demo's own output."""
    print(f"[run_demo] {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def wanted_stamp() -> str:
    """Changes whenever the dependencies or version in pyproject.toml, or EXTRAS, change."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} {REPO} [{EXTRAS}]\n"


def run(command: list[str]) -> None:
    """Run a setup step; stop with its exit status and a readable message if it fails."""
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        log(f"failed (exit {result.returncode}): {' '.join(command)}")
        sys.exit(result.returncode)


def pip_version(python: Path) -> tuple[int, ...]:
    result = subprocess.run(
        [str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        log("pip is missing in the virtualenv. On Debian/Ubuntu: apt install python3-venv")
        sys.exit(1)
    number = result.stdout.split()[1]
    return tuple(int(part) for part in number.split(".")[:2] if part.isdigit())


def ensure_venv() -> Path:
    """Create the virtualenv and install the package into it, unless already done."""
    python = venv_python()
    if not python.exists():
        log(f"creating virtualenv {VENV}")
        run([sys.executable, "-m", "venv", "--clear", str(VENV)])
    stamp = wanted_stamp()
    if STAMP.is_file() and STAMP.read_text(encoding="utf-8") == stamp:
        return python
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    if pip_version(python) < MIN_PIP:
        log("upgrading pip")
        run([*pip, "install", "-q", "--upgrade", "pip"])
    log(f'installing "{REPO}[{EXTRAS}]" (editable) into {VENV}')
    run([*pip, "install", "-q", "-e", f"{REPO}[{EXTRAS}]"])
    STAMP.write_text(stamp, encoding="utf-8")
    return python


def main(argv: list[str]) -> int:
    python = ensure_venv()
    command = [str(python), str(MANAGE), "demo", *argv]
    child = subprocess.Popen(command)
    if hasattr(signal, "SIGTERM"):
        # `kill <this pid>` must not leave the server running as an orphan.
        signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
    while True:
        try:
            returncode = child.wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C reaches the child too (same process group); let it shut down cleanly.
            continue
    if returncode < 0:  # killed by a signal: report it the way a shell would
        return 128 - returncode if -returncode in signal.valid_signals() else 1
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
