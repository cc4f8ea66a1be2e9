"""A stage's log file: every line a stage or its tools print goes here, not to the console."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


class StageLog:
    """Line-oriented log of one stage run; thread-independent (each stage has its own file)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = open(path, "a" if append else "w", encoding="utf-8")

    def info(self, message: str) -> None:
        self._handle.write(message.rstrip("\n") + "\n")
        self._handle.flush()

    def write_raw(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def tail(self, lines: int = 20) -> str:
        return tail_of(self.path, lines)


def tail_of(path: Path, lines: int = 20) -> str:
    """The last lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- routing `logging` and `warnings` of the running stage into its log file -------------

_current = threading.local()


class _ThreadLogHandler(logging.Handler):
    """Sends a record to the log of the stage running on this thread, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        log = getattr(_current, "log", None)
        if log is not None:
            try:
                log.info(self.format(record))
            except ValueError:  # the log was closed
                pass


_handler_installed = False
_install_lock = threading.Lock()


def _install() -> None:
    global _handler_installed
    with _install_lock:
        if _handler_installed:
            return
        logging.captureWarnings(True)
        handler = _ThreadLogHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        for name in ("py.warnings", "bmbuild"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False
            logger.setLevel(logging.INFO)
        # libraries that log on the root logger (onnxruntime.quantization does) reach the
        # stage's log instead of the console
        root = logging.getLogger()
        for existing in list(root.handlers):
            root.removeHandler(existing)
        root.addHandler(handler)
        _handler_installed = True


@contextmanager
def bind_log(log: StageLog) -> Iterator[None]:
    """While the block runs, this thread's logging and warnings go to `log`."""
    _install()
    previous = getattr(_current, "log", None)
    _current.log = log
    try:
        yield
    finally:
        _current.log = previous


@contextmanager
def output_to_log(log: StageLog) -> Iterator[None]:
    """While the block runs, what is written to file descriptors 1 and 2 goes to `log`.

    For libraries whose C++ code writes to the process's stdout/stderr directly (the TorchScript
    ONNX exporter prints hundreds of lines of Torch IR when it fails). Only around such a call:
    it catches anything any thread writes meanwhile (a stage runs alone in its process: `-j 1`
    runs one stage at a time, and `-j N` one per worker process).
    """
    import ctypes

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        try:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers (std::cout shares them)
        except (OSError, AttributeError):
            pass

    flush()
    with tempfile.TemporaryFile() as capture:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            flush()
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            if text:
                log.write_raw(text if text.endswith("\n") else text + "\n")
