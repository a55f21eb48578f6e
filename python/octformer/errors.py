"""Exceptions raised by octformer; all bad-input errors are ``ValueError`` subclasses."""

from octformer._core import CorruptDataError, InternalError, OctformerError, OutOfBoundsError

__all__ = ["OctformerError", "OutOfBoundsError", "CorruptDataError", "InternalError"]
