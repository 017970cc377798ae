"""Tests of the common package the samples share."""
