"""
Where the mesh model comes from: entry files (read and parsed) and the
Kubernetes API (listed and watched).
"""
