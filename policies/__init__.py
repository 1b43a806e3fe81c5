"""Tiering policies, installed as ``fusefs.policies``; see ``base.py`` for the contract."""
