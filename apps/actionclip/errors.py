"""The errors a user can cause: each entry point prints them as one line and exits with status 2."""

from __future__ import annotations

from apps.actionclip.data import LabelsFileError
from apps.actionclip.model import HeadCheckpointError
from apps.actionclip.prompts import LabelError
from apps.clip import ClipLoadError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ClipLoadError,
    LabelError,
    LabelsFileError,
    HeadCheckpointError,
    FileNotFoundError,
    ValueError,
)
