"""End-to-end tests of the samples and of the Linux best practices they teach."""
