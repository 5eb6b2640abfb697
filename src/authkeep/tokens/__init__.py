"""ES256 tokens for devices, agents and short-lived access: keys, issue/verify, the JWKS."""
