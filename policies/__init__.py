"""Concrete lyra-rl policies."""
