"""Warnings that point at the user's line: the first caller outside lift_ext and torch."""
import os
import sys
import warnings

import torch

_INSIDE = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
           os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def warn_user(message: str, category: type = RuntimeWarning) -> None:
    """warnings.warn(message, category) attributed to the innermost frame whose code lies
    outside the lift_ext and torch packages (the line that called into the library)."""
    frame, level = sys._getframe(1), 2  # level 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
