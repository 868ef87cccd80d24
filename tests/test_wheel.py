"""A non-editable install (a wheel built from this checkout, installed into a fresh folder) runs `interp browse`:
the browser ships in the package, not in the source tree."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_wheel_install_runs_browse(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True
    )
    (wheel,) = wheels.glob("interp-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "INTERP_CACHE": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import interp; print(interp.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert where.startswith(str(target)), where  # the installed copy, not the checkout
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "interp", "browse", "--port", str(port), "--no-open-browser"],
                            cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, answered = time.monotonic() + 90, False
        while time.monotonic() < deadline and not answered:
            if proc.poll() is not None:
                pytest.fail(
                    f"interp browse exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    answered = reply.status == 200
            except OSError:
                time.sleep(0.5)
        assert answered, "the browser did not answer within 90 s"
        proc.terminate()  # SIGTERM to `interp browse` stops its Streamlit child too
        proc.wait(timeout=30)
        time.sleep(1)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
