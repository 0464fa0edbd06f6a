"""Errors the package raises on purpose.

Every error a user can cause (bad path, corrupt image, unknown encoder, mismatched bundle) is a
``CaptionerError`` whose message says what was wrong and how to fix it. The CLI prints it on one line
and exits non-zero; the service maps it to a 4xx JSON error.
"""

import re

# "<_io.BytesIO object at 0x7f...>" and bare " at 0x7f...": a heap address tells a client about the server's
# memory layout and makes identical inputs give different messages.
_REPR_WITH_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """``text`` without object reprs that name a heap address (for messages built from third-party errors)."""
    return _REPR_WITH_ADDRESS.sub("", text)


class CaptionerError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class DataError(CaptionerError):
    """A dataset folder or caption file is missing or malformed."""


class ImageError(CaptionerError):
    """An image cannot be read, is of an unsupported type, or is too large."""


class UnsupportedImageType(ImageError):
    """The bytes are not one of the supported image formats."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class ImageTooComplex(ImageError):
    """Decoding the image took longer than its time budget (e.g. a JPEG with thousands of scans)."""


class EncoderError(CaptionerError):
    """Unknown encoder name, or missing/invalid encoder weights."""


class BundleError(CaptionerError):
    """A model bundle is missing files, is tampered with, or does not match its manifest."""


class OptionsError(CaptionerError, ValueError):
    """Decoding options out of range."""
