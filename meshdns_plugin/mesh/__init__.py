"""
The mesh model, pure: what the entry files say the mesh is, and what one
proxy sees of it. Nothing here imports the reactor or Twisted Names, so every
rule can be tested as a plain function.
"""
