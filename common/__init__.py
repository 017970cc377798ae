"""Helpers shared by the Azure Batch Python samples.

- ``common.config``: load ``configuration.cfg`` and a sample's own ``.cfg`` into typed settings.
- ``common.clients``: build a ``BatchClient`` and a ``BlobServiceClient`` from those settings.
- ``common.local``: start localbatch and Azurite when the configuration points at them.
- ``common.helpers``: Batch building blocks (images, pools, nodes, jobs, tasks, task files, errors).
- ``common.storage``: Blob building blocks (containers, uploads, read-only SAS URLs).
- ``common.cleanup``: delete what a sample created, as its configuration decides.
- ``common.cli``: the command line, logging and exit codes every sample shares.
"""

from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding the samples, ``configuration.cfg`` and ``sample_configs/``."""
