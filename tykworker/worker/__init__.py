"""Worker processes: the loop, plugin loading and import scopes, dispatch of one call.

``tyk`` holds what plugins import as ``tyk.*`` and ``gateway``. This is the only package
that runs plugin code. Invariant: nothing here imports ``front`` or ``supervisor``.
"""
