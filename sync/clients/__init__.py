"""Small typed API clients. No sync logic and no retry loops: they classify outcomes."""
