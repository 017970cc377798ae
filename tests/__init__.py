"""Tests of the samples, the common package and the local emulator."""
