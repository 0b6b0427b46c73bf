"""Numbered SQL migrations (``NNNN_name.sql``), applied by :mod:`actors.store.migrate`.

A package only so that the SQL files ship with callwatch when it is installed.
"""
