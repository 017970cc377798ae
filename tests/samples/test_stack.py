"""make stack: the local stack on the data a sample kept, in the foreground, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common import REPOSITORY_ROOT
from common.clients import create_batch_client
from common.config import environment_variable_name, load_settings, sample_configuration_path
from common.local import localbatch_answers
from tests.samples.support import SAMPLE1, Backend, created_ids, environment_without_overrides, run_sample
from tests.ports import free_stack_ports
from tests.waiting import wait_for

STACK_TIMEOUT_SECONDS = 120


def test_make_stack_runs_the_stack_target() -> None:
    # Run as a top-level make even under `make test`, whose MAKEFLAGS and MAKELEVEL would make this
    # one a sub-make that prints "Entering/Leaving directory" lines.
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "stack"], cwd=REPOSITORY_ROOT,
                             env=environment, capture_output=True, text=True, check=True)

    assert dry_run.stdout.splitlines()[-1] == ".venv/bin/python -m common.stack"


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_what_a_sample_kept_can_be_looked_at_on_the_restarted_stack(scheme: str, tmp_path: Path) -> None:
    batch_port, blob_port = free_stack_ports()
    batch_endpoint = f"{scheme}://127.0.0.1:{batch_port}"
    environment = {
        **environment_without_overrides(),
        environment_variable_name("Batch", "endpoint"): batch_endpoint,
        environment_variable_name("Batch", "poll_interval_seconds"): "0.2",
        environment_variable_name("Storage", "blob_endpoint"): f"{scheme}://127.0.0.1:{blob_port}/devstoreaccount1",
        environment_variable_name("Local", "data_directory"): str(tmp_path / "data"),
    }
    # The sample starts its own stack on these ports and stops it when it ends.
    run = run_sample(SAMPLE1, Backend("own-stack", environment), tmp_path, "--keep-resources")
    assert run.returncode == 0, run.describe()
    [job_id] = created_ids(run.stdout, "job")
    assert f"To look at them: 'make stack' in {REPOSITORY_ROOT} starts the local stack on the same data" in run.stdout
    trust_bundle = tmp_path / "data" / "tls" / "trust-bundle.pem"
    assert not answers(batch_endpoint, trust_bundle)

    stack = subprocess.Popen([sys.executable, "-m", "common.stack"], cwd=REPOSITORY_ROOT, env=environment,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(stack.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("Running (") for line in printed), "the stack to run", STACK_TIMEOUT_SECONDS)
        output = "".join(printed)
        assert f"localbatch: {batch_endpoint} (Batch account 'localbatch'" in output
        assert f"  jobs: {job_id}\n" in output
        assert "  pools: helloworld_" in output and "(1 node(s) of standard_d2s_v3)" in output
        settings = load_settings(None, sample_configuration_path(SAMPLE1), environ=environment)
        for secret in (settings.batch.account_key, settings.storage.account_key):
            assert secret not in output
        client_options = {}
        if scheme == "https":
            assert f"  https: trust the stack's development CA with export REQUESTS_CA_BUNDLE={trust_bundle} " in output
            client_options["connection_verify"] = str(trust_bundle)
        with create_batch_client(settings.batch, **client_options) as batch_client:
            assert batch_client.get_job(job_id).execution_info.pool_id  # the kept job and its auto-pool, as left
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=STACK_TIMEOUT_SECONDS) == 0, stack.stderr.read()
        wait_for(lambda: not reader.is_alive(), "the stack's output to be read", 10)
    finally:
        if stack.poll() is None:
            stack.kill()
            stack.wait(timeout=STACK_TIMEOUT_SECONDS)
    assert printed[-1] == "Stopped; the data stays for the next run.\n"
    assert not answers(batch_endpoint, trust_bundle)


def answers(endpoint: str, trust_bundle: Path) -> bool:
    """Whether localbatch answers at ``endpoint`` (trusting the stack's CA for https)."""
    if not endpoint.startswith("https://"):
        return localbatch_answers(endpoint)
    previous = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    os.environ.update({name: str(trust_bundle) for name in previous})
    try:
        return localbatch_answers(endpoint)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
