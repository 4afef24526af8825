"""Helpers the tests share: real service processes on free loopback ports."""
