"""Tiny PNG encoder (zlib only, no imaging library) for the inputs shown in the failure gallery."""

from __future__ import annotations

import base64
import struct
import zlib

__all__ = ["png_bytes", "png_data_uri"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: bytes, width: int, height: int, *, channels: int = 1) -> bytes:
    """Encode 8-bit pixels, row by row (grey: 1 byte a pixel; colour: 3, RGB), as a PNG file.

    Raises
    ------
    ValueError
        When ``pixels`` does not hold ``width * height * channels`` bytes.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    stride = width * channels
    if width < 1 or height < 1 or len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for a {width}x{height}x{channels} image, got {len(pixels)}")
    color_type = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    # filter type 0 (none) before every row
    raw = b"".join(b"\x00" + pixels[r * stride : (r + 1) * stride] for r in range(height))
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def png_data_uri(pixels: bytes, width: int, height: int, *, channels: int = 1) -> str:
    """The PNG as a ``data:image/png;base64,...`` URI (allowed by the report's ``img-src data:`` policy)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels, width, height, channels=channels)).decode()
