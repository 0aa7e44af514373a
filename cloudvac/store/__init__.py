"""Persistence for cloudvac: what the cloud cannot tell us (see ``Store``)."""

from cloudvac.store.store import Store

__all__ = ["Store"]
