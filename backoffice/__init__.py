"""The back office: Django's admin site for sales, operations and finance staff."""
