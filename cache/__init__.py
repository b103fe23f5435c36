"""Tiers in front of a durable backend (memory LRU, Redis, disk LRU) and the tier chain.

Not built yet: the "Tiered storage" issue fills this package. Until then the origin serves
straight from its durable ``blobstore`` backend.
"""
