"""Files the samples' tasks run or download; `key_vault_key_wrapper` is also imported by sample 3."""
