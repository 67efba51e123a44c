"""The ``ddpm`` command: flags -> config -> one call into the layers below."""
