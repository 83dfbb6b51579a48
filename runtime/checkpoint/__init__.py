"""Checkpoint and restore of containers (KEP-2008): CRIU's availability, the archive, the flows.

`availability.py` decides whether this node and a handler can checkpoint at all,
`location.py` checks where the archive goes, `archive.py` owns the archive's
layout (the one CRI-O and Podman write, which checkpointctl reads), and
`flow.py` is CheckpointContainer itself. Running CRIU is `oci/checkpoint.py`.
Restore into a new pod: `restore.py` makes the container from an archive at
CreateContainer (extracted through `safe_tar.py`), `restore_start.py` restores
its process at StartContainer. A whole pod: `pod.py` is CheckpointPod (one
`flow.checkpoint_to` per container), `pod_restore.py` is RestorePod, and
`pod_archive.py` owns the pod archive's layout around the container archives.
"""
