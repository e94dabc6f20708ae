"""Exceptions raised by the data pipeline.

Every error names the file (and, where it applies, the byte offset, line or record) so a
user with a 5-million-image dataset can find the one bad file without a debugger. They all
derive from ``DataError`` (a ``ValueError``) so callers can catch data problems as a group
without also swallowing programming errors.
"""

from __future__ import annotations


class DataError(ValueError):
    """Base class for bad input data (corrupt files, wrong layout, unsafe content)."""


class ImageDecodeError(DataError):
    """An image file or record could not be read or decoded.

    ``source`` names the file (or ``file#record``) and ``reason`` says what went wrong, so
    reports can list failures without parsing the message.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class RecordIOError(DataError):
    """A RecordIO ``.rec``/``.idx`` pair is malformed (bad magic, truncated, bad index, bad label)."""


class TruncatedRecordError(RecordIOError):
    """A record runs past the end of its ``.rec``: the file was cut short (a broken copy).

    Kept apart from other record errors because it says something about the whole file,
    which a strict reader refuses at open time, whereas one corrupt record in the middle
    (bad magic, a NaN label) is substituted and reported like an undecodable image.
    """


class UnsafePickleError(DataError):
    """A pickle asked for something a plain data file never contains (code, objects)."""


class VerificationDataError(DataError):
    """A verification protocol (``.bin``, ``pairs.txt``) is malformed or refers to missing images."""


class AlignmentError(DataError):
    """A face could not be aligned (no face found, bad landmarks)."""
