"""OS plumbing without tykworker semantics: Unix socket paths, credentials and ``prctl``,
sd_notify, process titles, crash-dump files.

Imports no role package. Every function here could live in another project unchanged.
"""
