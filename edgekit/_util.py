"""Small shared helpers: silencing the converters' own chatter, stage timing, tool versions."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterator

TOOLS = ("edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim",
         "litert-torch", "ai-edge-quantizer", "ai-edge-litert")


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def captured_output(log: io.StringIO) -> Iterator[None]:
    """Send everything the libraries print (Python and C++ alike, fd 1 and 2) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no real fds (embedded interpreters): leave output alone
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            yield
            return
        old_level = logging.root.level
        logging.disable(logging.WARNING)
        try:
            text = io.TextIOWrapper(os.fdopen(os.dup(tmp.fileno()), "wb"), write_through=True)
            with warnings.catch_warnings(), contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                warnings.simplefilter("ignore")
                try:
                    yield
                finally:
                    text.close()
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(old_level)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            log.write(tmp.read().decode("utf-8", "replace"))


ProgressFn = Callable[[str, str, float], None]  # (stage, "start" | "done" | "skip", seconds)


@dataclass
class Stages:
    """Times each stage, reports it to the progress callback, keeps the tools' output."""

    progress: ProgressFn | None = None
    timings: list[dict] = field(default_factory=list)
    log: io.StringIO = field(default_factory=io.StringIO)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(name, "start", 0.0)
        t0 = time.perf_counter()
        self.log.write(f"==== {name}\n")
        with captured_output(self.log):
            yield
        seconds = time.perf_counter() - t0
        self.timings.append({"stage": name, "seconds": round(seconds, 3)})
        if self.progress:
            self.progress(name, "done", seconds)
