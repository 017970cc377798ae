"""Fuzzing localbatch from a description generated out of its routes and the SDK's models."""
