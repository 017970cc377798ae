"""Scrub secrets (account keys, SAS and Shared Key signatures, bearer tokens) from text.

Copy ``redact_secrets`` along with any helper that prints or logs errors or URLs: it needs only
the standard library.
"""

from __future__ import annotations

import re


def redact_secrets(text: str) -> str:
    """Return ``text`` with account keys, SAS signatures and SharedKey signatures replaced.

    Safe to call on URLs, connection strings, log lines and error messages.
    """
    text = re.sub(r"(?i)\b(sig|signature)=[^&\s\"'<>;]+", r"\1=REDACTED", text)
    text = re.sub(r"(?i)\b(AccountKey|SharedAccessSignature)=[^;\s\"'<>]+", r"\1=REDACTED", text)
    text = re.sub(r"(?i)\b(SharedKey(?:Lite)?\s+[^:\s]+):\S+", r"\1:REDACTED", text)
    text = re.sub(r"(?i)\b(Bearer)\s+[A-Za-z0-9\-_.~+/]+=*", r"\1 REDACTED", text)
    return text
