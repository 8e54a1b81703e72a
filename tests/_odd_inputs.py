"""Inputs that are not ordinary images, shared by the input-safety tests (imported as
``from _odd_inputs import ...``; tests/conftest.py puts tests/ on sys.path):

* :func:`odd_entries`: FIFO, socket, device, broken symlink and symlink loops in a folder;
* :func:`png_header`: a decompression bomb's header; :func:`save_frames`: multi-frame files;
* :func:`finishes`: runs a call and fails the test instead of hanging on a FIFO or a loop.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TIMEOUT = 20.0


def all_bscans(src):
    return [b for v in src.volumes for b in v.load()]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def finishes(fn, *fifos, timeout: float = TIMEOUT):
    """Run ``fn`` in a thread and fail (instead of hanging) if it is still running after
    ``timeout`` s; a reader stuck on one of ``fifos`` is then released so the thread ends."""
    result: dict = {}

    def run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:  # a writer that opens and closes: the blocked reader gets EOF
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"still running after {timeout} s: blocked on a FIFO or looping")
    if "error" in result:
        raise result["error"]
    return result["value"]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (8-bit gray); its pixel data is a few
    bytes (never decoded: the size is refused first). A real decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def save_frames(path: Path, frames: list[np.ndarray]) -> Path:
    """A multi-frame file: multi-page TIFF, animated GIF or APNG (by the suffix)."""
    ims = [Image.fromarray(f) for f in frames]
    kw = {"duration": 100, "loop": 0} if path.suffix != ".tif" else {}
    ims[0].save(path, save_all=True, append_images=ims[1:], **kw)
    return path


def odd_entries(folder: Path, monkeypatch) -> list[str]:
    """FIFO, socket, device, broken symlink and symlink loops (a->b->a, self) in ``folder``,
    named like images; returns the FIFOs (for :func:`finishes`)."""
    fifo = folder / "x.png"
    os.mkfifo(fifo)
    monkeypatch.chdir(folder)  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    sock.close()
    os.symlink(os.devnull, folder / "dev.png")
    os.symlink(folder / "nowhere.png", folder / "broken.png")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    os.symlink("self.png", folder / "self.png")
    os.symlink(".", folder / "here")  # a folder looping onto itself
    return [str(fifo)]


#: What :func:`odd_entries` makes, as the skip warnings name them.
ODD = ["x.png (FIFO)", "sock.png (socket)", "dev.png (character device)", "broken.png (broken symlink)",
       "loop_a.png (symlink loop)", "loop_b.png (symlink loop)", "self.png (symlink loop)"]
