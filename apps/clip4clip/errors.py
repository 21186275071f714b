"""The one error class of apps.clip4clip that a user can fix (bad option, unreadable input, wrong model)."""

from common.errors import UserError


class Clip4ClipError(UserError, ValueError):
    """A clip4clip input or option the user can fix; the message says how."""
