"""Blob containers mounted on nodes as real FUSE file systems, backed by Azure Storage (Azurite).

Like blobfuse2 on a Batch node, each mount is served by a helper process of its own
(`python -m localbatch.node.blobmount.helper`), with blobfuse2's file cache: a file is
downloaded whole into a per-mount cache when it is opened, written there, and uploaded when
it is flushed or closed.

- `options.py`: the pool's blobfuseOptions, read as blobfuse2 reads its command line
- `storage.py`: the container, through azure-storage-blob (listing, download, upload, markers)
- `cache.py`: the file cache (open handles, what is not uploaded yet, eviction)
- `filesystem.py`: the FUSE operations, errors mapped to errno
- `helper.py`: the helper program (one per mount)
- `manager.py`: the emulator's side: start, watch and stop the helpers of each node
- `mountpoints.py`: the mount table, and detaching what is mounted below a directory

This package's `__init__` imports nothing, so the node layout can use `mountpoints` cheaply.
"""
