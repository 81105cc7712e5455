"""A minimal Django project that hands notifications to asyncbridge from a view."""
