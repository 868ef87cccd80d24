"""A prompt -> response cache on disk: one JSON object per line, appended whole, so an interrupted run resumes.

Each line is `{"key": sha256 of the request, "model": ..., "response": ...}`. A line is written with one
`os.write` on a file opened for appending and fsynced, so a crash leaves whole lines and at most one torn last
line, which reading skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def request_key(request: dict[str, Any]) -> str:
    """A stable hash of a request (model, messages, sampling settings)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """Responses by request key, read from and appended to one JSON-lines file (thread-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        self.lock = threading.Lock()
        self.torn = 0  # lines that could not be read (a write cut short)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn += 1

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, response: str, model: str = "") -> None:
        """Remember `response` and append it to the file as one whole line."""
        line = json.dumps({"key": key, "model": model, "response": response}, ensure_ascii=False) + "\n"
        with self.lock:
            self.entries[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self.torn and os.fstat(fd).st_size:  # start after a torn last line, on a line of its own
                    os.write(fd, b"\n")
                    self.torn = 0
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
