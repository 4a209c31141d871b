"""Alembic migrations of the link store (the schema of ``sync/store/tables.py``).

Applied with ``bpsync db upgrade`` (``sync.store.upgrade_database``), which locates this
package via ``migrations.__file__``, so it works from a checkout and when installed.
Developers may also run ``alembic -c migrations/alembic.ini ...`` with
``BPSYNC_DATABASE_URL`` set. New migrations: ``alembic -c migrations/alembic.ini
revision --autogenerate -m "..."``, then review; the drift test fails until the
migrations produce exactly ``tables.py``.
"""

#: the newest revision in ``versions/``: the daemon checks a database against it without
#: loading Alembic (about 11 MB); update it with every new migration
#: (``tests/store/test_migrations.py`` fails while it differs from Alembic's own head)
HEAD = "0005"
