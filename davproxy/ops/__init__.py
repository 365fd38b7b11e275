"""Operating davproxy.

The admin command, the demo, embedded upstream servers for demo, tests and benchmarks.
"""
