"""The one error class of apps.actionclip that a user can fix (bad labels, labels file, head, option)."""

from common.errors import UserError


class ActionClipError(UserError, ValueError):
    """An actionclip input or option the user can fix; the message says how."""
