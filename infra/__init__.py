"""Pulumi program that provisions the Cloudflare edge and the regional relay fleet."""
