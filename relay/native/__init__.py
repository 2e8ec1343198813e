"""Building the relay's native per-datagram path.

The path itself (C source and its Python wrapper) lives in ``splitrelay.relay.media.native``, beside the
fast path that calls it: media may import only itself (the emulator shares it). Its build needs cffi's
compiler driver, which media may not import, so the build lives here: ``python -m
splitrelay.relay.native.build`` (run by ``make setup`` and CI).
"""
