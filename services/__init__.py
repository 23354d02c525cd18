"""Virtual Workspaces."""
