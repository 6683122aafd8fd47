"""Byte layouts that cross a process boundary, and nothing else.

Runs in every process. Imports no role package (``supervisor``, ``front``, ``worker``,
``cli``) and no asyncio or sockets: encoders, decoders and fixed layouts only.

* ``frames``: the length-prefixed frame codec of the bridge and the raw socket;
* ``control``: control messages on the status and settings channels;
* ``answers``: ``return_overrides`` fragments the front appends to answer for a hook;
* ``scoreboard``: the shared-memory slot layout workers write and everyone reads.
"""
