"""Edge: the Cloudflare Python Worker's logic. Pure Python so it runs on Pyodide and CPython alike."""
