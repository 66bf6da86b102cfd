"""Benchmarks: documented commands that print figures and write results/*.json.

They build namespaces like the kernel tests do and must run where the kernel
has bonding and ip6tnl: inside the UML sandbox (see each module's docstring).
"""
