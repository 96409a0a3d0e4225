"""Shared learning state: versioned snapshots of what the workers learned, and rollback."""
