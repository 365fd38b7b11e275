"""Generic WebDAV pieces every feature builds on.

XML, errors and DAV conditions, paths, HTTP bodies, RFC 6578 sync.
"""
