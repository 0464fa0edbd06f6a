"""Errors the package raises on purpose.

Every error a user can cause (bad path, corrupt image, unknown encoder, mismatched bundle) is a
``CaptionerError`` whose message says what was wrong and how to fix it. The CLI prints it on one line
and exits non-zero; the service maps it to a 4xx JSON error.
"""


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


class EncoderError(CaptionerError):
    """Unknown encoder name, or missing/invalid encoder weights."""


class BundleError(CaptionerError):
    """A model bundle is missing files, is tampered with, or does not match its manifest."""


class OptionsError(CaptionerError, ValueError):
    """Decoding options out of range."""
