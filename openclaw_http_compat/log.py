"""The package logger."""

import logging

__all__ = ("log",)

log = logging.getLogger(__package__)
