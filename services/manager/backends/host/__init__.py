"""What several plug-ins share on the host: cgroups (limits, freezing, counters), the disk
images that give a workspace a filesystem of its own, and the shaped network links."""
