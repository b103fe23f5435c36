"""Asset metadata store (SQLAlchemy Core + Alembic). Not built yet: the "Catalog" issue fills it."""
