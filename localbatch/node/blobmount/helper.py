"""The mount helper: one process per mounted container, as blobfuse2 is on a Batch node.

    python -m localbatch.node.blobmount.helper <settings file>

The settings file (JSON, mode 0600, written by manager.py) names the mount point, the cache
directory, the log, the account's blob endpoint, the container, the options and the credential
(accountKey or sasKey; or the resource id of a pool identity, whose Storage tokens come from the
node's managed identity endpoint in IDENTITY_ENDPOINT/IDENTITY_HEADER). The helper reads it and deletes it at once, so the credential is never
on a command line, in the environment or left on disk. It checks access as blobfuse2 does (one
listing), mounts in the foreground and prints `mounted` on stdout once the kernel has the file
system; when it cannot, it prints `error: <reason>` and exits non-zero. SIGTERM unmounts and
ends it. Its log never holds the credential or a SAS signature.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Optional

SIGNATURE = re.compile(r"(sig=)[^&\s\"']+", re.IGNORECASE)


def read_settings(path: str) -> dict:
    """The settings, and the file gone."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    finally:
        try:
            os.remove(path)
        except OSError:
            pass


def redactor(secret: Optional[str]):
    def redact(text: str) -> str:
        if secret:
            text = text.replace(secret, "***")
        return SIGNATURE.sub(r"\1***", text)
    return redact


def report(line: str) -> None:
    """One line to the manager (stdout)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m localbatch.node.blobmount.helper <settings file>\n")
        return 2
    settings = read_settings(argv[1])
    credential = settings.get("credential") or {}
    redact = redactor(credential.get("accountKey") or credential.get("sasKey"))
    logging.basicConfig(filename=settings["log"], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # no request dumps
    log = logging.getLogger("blobfuse")

    def fail(reason: str, code: int = 1) -> int:
        reason = redact(reason)
        log.error("mount failed: %s", reason)
        report(f"error: {reason}")
        return code

    from .options import OptionError, parse_options
    try:
        options = parse_options(settings.get("options") or "")
    except OptionError as exc:
        return fail(f"blobfuseOptions: {exc}", 2)
    from .cache import FileCache
    from .filesystem import BlobFileSystem
    from .storage import BlobStore, StorageError
    token_credential = None
    if credential.get("identityResourceId"):  # the node's managed identity endpoint, as blobfuse2's msi mode
        from azure.identity import ManagedIdentityCredential
        token_credential = ManagedIdentityCredential(client_id=credential["identityClientId"]) \
            if credential.get("identityClientId") else \
            ManagedIdentityCredential(identity_config={"mi_res_id": credential["identityResourceId"]})
    store = BlobStore.connect(settings["accountUrl"], settings["containerName"], settings["accountName"],
                              account_key=credential.get("accountKey"), sas=credential.get("sasKey"),
                              token_credential=token_credential)
    authentication = (f"the identity {credential['identityResourceId']}" if credential.get("identityResourceId")
                      else "the account key" if credential.get("accountKey") else "a SAS")
    log.info("mounting container %s of account %s (%s) at %s with %s%s", settings["containerName"],
             settings["accountName"], settings["accountUrl"], settings["mountPoint"], authentication,
             f"; {' '.join(options.recorded)} recorded only" if options.recorded else "")
    try:
        store.check_access()
    except StorageError as exc:
        return fail(f"failed to authenticate credentials for azstorage: {exc.strerror}")
    os.makedirs(settings["mountPoint"], exist_ok=True)
    cache = FileCache(settings["cacheDir"], store, options.file_cache_timeout)
    filesystem = BlobFileSystem(store, cache, options, on_mounted=lambda: report("mounted"))
    from mfusepy import FUSE
    try:
        FUSE(filesystem, settings["mountPoint"], foreground=True, nothreads=True, **options.fuse_arguments())
    except (RuntimeError, OSError) as exc:
        return fail(f"libfuse could not mount {settings['mountPoint']}: {exc}")
    log.info("unmounted %s", settings["mountPoint"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
