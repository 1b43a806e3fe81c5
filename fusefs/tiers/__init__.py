"""Storage tiers: the capacity tier (source of truth) and the fast tier (local NVMe cache)."""
