"""The `agpt` commands that are not the daemon: demo, bench, eval, subscribe, health, bank build.

Only these may reach `export`, and only inside a function (the reference in bench, the lite export in demo).
"""
