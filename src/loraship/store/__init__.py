"""Version store: the on-disk versions, their manifests, atomic writes and content hashes (the lowest layer)."""
