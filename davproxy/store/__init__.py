"""davproxy's own state behind one interface.

Share records, notifications, and the migrations that shape them.
"""
