"""Subcommands of the ``hamjax`` CLI, one module each (see :mod:`hamjax.cli`)."""
