"""What must hold before an import writes anything, each checked up front with a one-line reason.

An import that stops halfway leaves keys and history behind it; one that cannot finish should
say so before its first write. So the LiteLLM database is read (connectivity), meterway's is
reached and its schema revision read (an import migrates a database it may, as documented; a dry
run writes nothing and so says to run `meterway migrate`), and, when LiteLLM stored models in its
database, the salt key that opens their credentials and meterway's key that seals them again must
both be there, and the salt key must open at least one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meterway.config.secret import Secret
from meterway.errors import MeterwayError
from meterway.importer.crypto import NotDecryptable, decrypt
from meterway.importer.source import SourceRow
from meterway.store import revision


class ImportRefused(MeterwayError):
    """A precondition of the import does not hold; nothing was written. The message says which."""


def _number(rev: str) -> int | None:
    return int(rev) if rev.isdigit() else None


def check_revision(at: str | None, shown: str, *, dry_run: bool) -> None:
    """`at`: the revision of meterway's database at `shown` (None: never migrated)."""
    if at is None or at == revision.HEAD:
        return  # empty: an import creates the schema, a dry run counts everything as new
    number, head = _number(at), _number(revision.HEAD)
    if number is None or head is None or number > head:
        raise ImportRefused(
            f"meterway's database at {shown} is at revision {at}, which this meterway (revision "
            f"{revision.HEAD}) does not know: run the import with the meterway that wrote it"
        )
    if dry_run:
        raise ImportRefused(
            f"meterway's database at {shown} is at revision {at}, this meterway needs {revision.HEAD}: "
            "run `meterway migrate` first (a dry run writes nothing, so it does not migrate)"
        )


def check_models(models: Sequence[SourceRow], salt_key: Secret | None, seal_key: Secret | None) -> None:
    """LiteLLM's stored models can be carried over: a salt key that opens their credentials and a
    key of meterway's to seal them under. `models`: the rows of LiteLLM_ProxyModelTable."""
    if not models:
        return
    count = f"{len(models)} stored model{'s' if len(models) != 1 else ''}"
    if salt_key is None:
        raise ImportRefused(
            f"the LiteLLM database has {count} with encrypted credentials and no salt key was given: "
            "pass --salt-key (LiteLLM's LITELLM_SALT_KEY, or its master key if it had none) or set "
            "LITELLM_SALT_KEY, or --without-models to leave them behind"
        )
    encrypted = [v for m in models for v in _params(m).values() if isinstance(v, str)]
    if encrypted and not any(_opens(v, salt_key) for v in encrypted):
        raise ImportRefused(
            f"the salt key given opens none of the credentials of the {count}: it is not the "
            "LITELLM_SALT_KEY (or master key) the LiteLLM proxy encrypted them with"
        )
    if seal_key is None:
        raise ImportRefused(
            f"no key to seal the credentials of the {count} under: set METERWAY_SALT_KEY (or give "
            "the master key `meterway serve` uses, in --config or METERWAY_MASTER_KEY), or pass "
            "--without-models"
        )


def _params(model: SourceRow) -> Mapping[str, object]:
    params = model.get("litellm_params")
    return params if isinstance(params, Mapping) else {}


def _opens(value: str, salt_key: Secret) -> bool:
    try:
        decrypt(value, salt_key.reveal())
    except NotDecryptable:
        return False
    return True
