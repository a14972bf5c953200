"""meshdns: a mesh-aware DNS proxy built as a plugin for Twisted Names."""
