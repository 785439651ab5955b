"""Headless Chromium for the tests of the HTML pages: the rendered DOM and the page's console errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prereq import missing

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

# Chromium logs console messages of the page as `[pid:tid:time:INFO:CONSOLE:LINE] "TEXT", source: URL (LINE)`
# (older builds: `CONSOLE(LINE)`), whatever their level, so console.error and uncaught exceptions both show
# up here. Everything else on stderr is Chromium's own chatter on a headless box with no D-Bus, GPU or
# display (`ERROR:dbus/bus.cc`, `WARNING:vaapi_wrapper.cc`, sandbox notes, the Debian wrapper's shell
# warning): those lines have no CONSOLE tag and say nothing about the page, so they are ignored.
_CONSOLE = re.compile(r':CONSOLE[:(]?\d*\)?\]\s*"(?P<text>.*)", source: (?P<source>\S*)')


def render_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM of `page` after its scripts ran, and the console messages that came from the page
    (`profile`: a new folder for Chromium's user data). Skips, or fails under CI=true, without Chromium."""
    if CHROMIUM is None:
        missing("chromium is not installed (apt-get install chromium; make test installs it)")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    page_messages = [m.group("text") for m in _CONSOLE.finditer(done.stderr)
                     if m.group("source").startswith("file://")]
    uncaught = [line for line in done.stderr.splitlines() if "Uncaught" in line]
    return done.stdout, page_messages + uncaught
