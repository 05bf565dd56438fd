"""Checkpoint files: reading every layout safely, classifying, model folders, key tables, writing, and the loading chain."""

__all__ = ['classify', 'containers', 'folders', 'keys', 'load', 'read', 'save']
