"""The sharing web page, served by davproxy at ``<prefix>.davproxy/web/``.

For people whose clients (Thunderbird, DAVx5, Evolution, GNOME Calendar) cannot send
or answer invitations: share one's calendars and address books, answer invitations,
leave shares, manage feed subscriptions, and find the URL and steps to set up each
client.  ``pages`` is the HTTP side (login, CSRF, rendering), ``account`` what the
page shows and does through the share model and subscriptions, ``sessions`` the
server-side sessions, ``people`` who one can share with.  Templates and static
assets ship in this package and are served by davproxy itself: no third-party assets.
"""
