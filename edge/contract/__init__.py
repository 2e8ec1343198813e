"""The contract between the parts, written once: the Worker (Pyodide) and the relay both import it.

Standard library only. ``json_fields`` (validation, the dataclass ⇄ JSON codec), ``safety`` (secrets,
URL ids, log-safe text), ``api_error``, ``sfu`` (Cloudflare SFU models), ``sfu_http`` (its requests and
responses), ``retry`` (policy and the one retry loop), ``turn`` (TURN credentials), ``control`` (the
edge→relay attach contract) and ``signing`` (its HMAC signatures).
"""
