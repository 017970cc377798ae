"""Thin request handlers: parse and validate, call the service, shape the reply."""
