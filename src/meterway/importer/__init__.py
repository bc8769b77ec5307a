"""Moving over from another gateway's database: `meterway import litellm`.

`source` reads a LiteLLM proxy's PostgreSQL database, read-only; `mapping` turns its rows into
meterway's (pure, so every rule is tested offline, and each row it cannot take says why);
`crypto` opens the credentials LiteLLM encrypted with its salt key; `run` writes what is new and
reports the rest. See docs/migrating-from-litellm.md.
"""
