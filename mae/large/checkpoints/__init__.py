"""Checkpoint files: reading every layout safely, classifying, model folders, key tables, writing, and the loading chain."""

__all__ = ['containers', 'folders', 'keys', 'load', 'read']
