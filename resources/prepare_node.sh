#!/bin/bash
# The start task of sample 3's pool: a Python virtual environment with the Azure SDK packages the
# task needs, and the task's files, in the node's shared directory. Runs from the start task's
# working directory, where Batch put this script's resource files.
set -euo pipefail
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    # Azure's Ubuntu images ship python3 without the venv module (the start task runs as admin).
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
python3 -m venv "$AZ_BATCH_NODE_SHARED_DIR/sdk"
"$AZ_BATCH_NODE_SHARED_DIR/sdk/bin/python" -m pip install --quiet --disable-pip-version-check -r task_requirements.txt
cp decrypt_secret_task.py key_vault_key_wrapper.py "$AZ_BATCH_NODE_SHARED_DIR/"
echo "Node prepared: $("$AZ_BATCH_NODE_SHARED_DIR/sdk/bin/python" --version), $(grep -v '^#' task_requirements.txt | tr '\n' ' ')"
