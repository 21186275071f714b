"""Plumbing every layer shares: typed settings, atomic writes and locks, the user-error base class.

Nothing here knows about images, text or models.
"""
